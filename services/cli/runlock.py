"""One pipeline per run directory: an exclusive lock held by `pktscope run` for its whole life.

``flock`` is released by the kernel when the holder dies, however it dies, so a stale lock
never blocks the next run; the file names the holder's pid for the error message and for
``pktscope stop``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "run.lock"


class RunDirBusy(Exception):
    """Another `pktscope run` holds the lock; ``pid`` is its process id (0 if unknown)."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        super().__init__(
            f"another pktscope run (pid {pid if pid > 0 else '?'}) is using {run_dir}; "
            f"stop it with `pktscope stop --run-dir {run_dir}` or pass another --run-dir"
        )
        self.pid = pid


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise RunDirBusy (never waits)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(self.path.parent, holder_pid(self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def holder_pid(run_dir: Path) -> int:
    """The pid of the `pktscope run` holding the lock of ``run_dir``, or 0 when nobody does."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return 0
    finally:
        os.close(fd)
