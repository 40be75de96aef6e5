"""Ending a child process we started: ask, wait a bounded time, then kill."""

from __future__ import annotations

import subprocess


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``proc`` to exit; past that, SIGKILL it and reap it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
