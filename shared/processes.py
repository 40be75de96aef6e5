"""Ending a child process we started: ask, wait a bounded time, then kill."""

from __future__ import annotations

import os
import select
import subprocess


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``proc`` to exit; past that, SIGKILL it and reap it."""
    if not _exited_within(proc, timeout):
        proc.kill()
    proc.wait()


def _exited_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` exits within ``timeout`` s, noticed the moment it does.

    ``Popen.wait(timeout)`` polls with sleeps that grow to 50 ms, so the end of every command
    waited up to 50 ms past supervisord's exit and again past the zygote's. A pidfd (Linux 5.3)
    becomes readable when the process exits; where there is none, ``Popen.wait`` it is.
    """
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)  # not reaped yet (only we wait for it): still this process
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        select.select([fd], [], [], max(0.0, timeout))
    finally:
        os.close(fd)
    return proc.poll() is not None
