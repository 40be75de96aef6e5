"""Redis writes whose reply is read one write later instead of waited for.

Why: the decoders and the flow-tracker write their progress after every frame
(shared/continuity.py), and the flow-tracker is the serial stage. On a busy 2-core machine a
reply waits until redis-server gets a core, so each synchronous write held the stage for up to
milliseconds: py-spy put 12% of the flow-tracker's wall samples in that wait on the 5x bench
capture. ``scripts.bench_processes``, 3 runs each, 5x capture (2026-12-03): waited for, 3.64-3.68 s
wall and 5.74-5.87 CPU s for the whole command; not waited for, 3.37-3.55 s and 5.47-5.75 s.

The command is in the socket before the caller goes on, so a process killed right after
still delivers it (the kernel sends what was written), and Redis runs one connection's
commands in order. What is not ordered is this connection against the process's other
connections: call ``drain()`` before another connection writes the same key.
"""

from __future__ import annotations

from typing import Any

import redis


class DeferredWrites:
    """One connection of ``r``'s pool, owing at most one reply."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._conn: Any = None
        self._owed = False

    def send(self, *command: Any) -> None:
        """Read the reply still owed, then send ``command`` (e.g. ``"HSET", key, f, v, ...``).

        Raises redis.RedisError when this or the previous write failed.
        """
        self.drain()
        if self._conn is None:
            self._conn = self.r.connection_pool.get_connection()
        try:
            self._conn.send_command(*command)
        except BaseException:
            self._drop()
            raise
        self._owed = True

    def drain(self) -> None:
        """Wait for the reply still owed, if any (an error reply is raised)."""
        if not self._owed:
            return
        self._owed = False
        try:
            self._conn.read_response()
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn, self._owed = self._conn, None, False
        if conn is not None:
            conn.disconnect()
            self.r.connection_pool.release(conn)
