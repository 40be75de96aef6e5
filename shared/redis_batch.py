"""A batch of commands in one round trip on a plain (non-Cluster) client, without redis-py's pipeline layers.

The detector sends each frame's decisions as one pipeline of EVALSHA calls (~14,500 on the 5x
bench capture). redis-py 8's ``Pipeline.execute`` wraps that round trip in its retry policy,
observability hooks, a fieldset-prepare pass and a response-callback lookup per command: 40%
of the detector engine's own CPU in one process (py-spy, the engine fed the 5x capture's 160k
flow events against a private redis-server). This sends the same packed bytes
(``Connection.pack_commands``) and reads each reply with ``Connection.read_response``, nothing
else: hand-written on a measured hot path, the commands still built by redis-py's methods.

What differs from ``Pipeline.execute(raise_on_error=False)``, and why it is fine for its callers:

- replies are as the server sent them (decoded text, integers, lists), with no per-command
  response callback: callers here look only at script replies and at errors;
- a connection error or timeout drops the connection and is raised at once, without
  redis-py's own retries: the detector's retry loop waits, counts the outage and sends again
  what got no answer (its scripts are idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError


def run_batch(r: redis.Redis, commands: Sequence[tuple]) -> list[Any]:
    """Each command's reply, or its ``ResponseError`` (``NoScriptError``, ...), in order."""
    if not commands:
        return []
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # an error reply: the ones after it are still read
                replies.append(exc)
        return replies
    except BaseException:
        conn.disconnect()  # replies may be left on the socket: never hand it to the next caller
        raise
    finally:
        pool.release(conn)
