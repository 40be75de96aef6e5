"""Redis writes whose replies are read later, in bunches, instead of waited for.

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

Up to ``MAX_OWED`` replies are owed, and the older half of them is read once that many are: by
then they have long arrived. Reading the one reply owed before each write (as at first) still
held a decoder: on the 5x capture py-spy put 20% of a decoder's wall samples in that read,
waiting for a redis-server that had not had a core since the previous frame.
"""

from __future__ import annotations

from typing import Any

import redis

MAX_OWED = 64  # replies not yet read, at most (an error reply surfaces this many writes late at worst)


class DeferredWrites:
    """One connection of ``r``'s pool, owing at most ``MAX_OWED`` replies."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._conn: Any = None
        self._owed = 0

    def send(self, *command: Any) -> None:
        """Send ``command`` (e.g. ``"HSET", key, f, v, ...``) without waiting for its reply.

        Raises redis.RedisError when this write or an earlier one failed (an error reply is
        raised when it is read: within ``MAX_OWED`` writes, or by ``drain()``).
        """
        if self._owed >= MAX_OWED:
            self._read(MAX_OWED // 2)
        if self._conn is None:
            self._conn = self.r.connection_pool.get_connection()
        try:
            self._conn.send_command(*command)
        except BaseException:
            self._drop()
            raise
        self._owed += 1

    def drain(self) -> None:
        """Wait for every reply still owed (an error reply is raised)."""
        self._read(self._owed)

    def _read(self, n: int) -> None:
        try:
            for _ in range(n):
                self._owed -= 1
                self._conn.read_response()
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn, self._owed = self._conn, None, 0
        if conn is not None:
            conn.disconnect()
            self.r.connection_pool.release(conn)
