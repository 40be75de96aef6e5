"""Dying with the parent: a pipeline must not outlive the `pktscope run` that started it.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) asks the kernel to signal a process
when the thread that forked it exits, however it exits (kill -9 included). It is kept across
``execve`` for ordinary binaries, so ``python -m shared.parent_watch -- CMD ...`` gives any
program (redis-server) the same tie: it sets the signal, then becomes CMD.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
# Set in a service forked by the launcher's zygote (services/launcher/child.py): its parent is
# the zygote, whose death must not stop it; supervisord's death reaches it through its client.
TIED_ELSEWHERE = False


def die_with_parent(sig: int = signal.SIGTERM, expected_parent: int | None = None) -> None:
    """Ask for ``sig`` when our parent dies; if it died already (we were re-parented), send it now."""
    if TIED_ELSEWHERE:
        return
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # not Linux or refused: supervision still stops us the ordinary way
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m shared.parent_watch -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    die_with_parent(signal.SIGTERM, expected_parent=os.getppid())
    os.execvp(args[0], args)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
