"""A service's end of stream, told to `pktscope run` the moment it is written.

`pktscope run` learns that a replay has ended from the stats in Redis (the last stage's and the
observer's ``eos``), which it read every 20 ms: on average 10 ms after the end, at the end of
every replay. So it also listens on a unix datagram socket in the run directory and gives its
path to supervisord's programs (``ENV``); a service's stats write that carries ``eos``
(shared/stats.py) sends one byte there. The byte only wakes the reader, which then reads Redis as
before: Redis stays the record, a lost datagram costs at most the old 20 ms, and a datagram from
anyone else (the run directory is the user's own, mode 0700) costs one Redis read.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from pathlib import Path

ENV = "PKTSCOPE_END_WAKE"
MAX_PATH = 100  # bytes: a unix socket path must fit sockaddr_un (108 with its terminator)

_sender: socket.socket | None = None


def notify() -> None:
    """Wake `pktscope run` if it listens (its programs have ``ENV``); never raises, never blocks."""
    global _sender
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        _sender.sendto(b"e", path)
    except OSError:  # nobody listens (run ended, or a service run on its own), or a full queue
        pass


class EndWake:
    """The listening end, in `pktscope run`: ``wait(timeout)`` returns early when a byte comes."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path

    @classmethod
    def bind(cls, path: Path) -> EndWake | None:
        """Listen on ``path``; None where it cannot (a run directory path too long, ...): the
        reader then waits its full timeouts, as before."""
        if len(os.fsencode(path)) > MAX_PATH:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock.bind(str(path))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return cls(sock, path)

    def env(self) -> dict[str, str]:
        return {ENV: str(self.path)}

    def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds, less if a byte came (all waiting are taken); True if one did."""
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile
            return False
        woke = False
        while ready:
            try:
                self.sock.recv(64)
                woke = True
            except (BlockingIOError, OSError):
                break
        return woke

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
