"""Turning a fresh fork of the zygote into a service, as if ``python -m MODULE ARGS`` had started it.

What fork shares and a new interpreter would not have, reset here: the client's stdin, stdout
and stderr on fds 0-2 (supervisord's log pipes), its environment, working directory and umask;
default signal handling (the zygote's handlers and wakeup fd are not the service's); a process
group of its own as supervisord gives each program; fresh random seeds; no logging handlers.
The service's exit runs what interpreter shutdown would (non-daemon threads joined, atexit
handlers, flushed streams), tells the client its code on the status pair, and ends with
``os._exit`` so the zygote's own frames below never run in the child.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import runpy
import signal
import socket
import sys
import threading
import traceback

from services.launcher import protocol
from shared import parent_watch

PR_SET_NAME = 15
# the zygote set these; a new interpreter would have its defaults
_RESET = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def become(message: dict, fds: list[int]) -> None:
    """Run the requested service in this (forked) process and exit with its code; never returns."""
    code = 1
    status: socket.socket | None = None
    try:
        status = _reset_process(message, fds)
        code = _run(str(message["module"]), [str(a) for a in message["argv"]])
        code = _shutdown(code)
    except BaseException:  # noqa: BLE001 - whatever happens, the zygote's frames must not resume
        traceback.print_exc()
    finally:
        if status is not None:
            with contextlib.suppress(OSError):
                protocol.send(status, {"code": code})
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


def _reset_process(message: dict, fds: list[int]) -> socket.socket:
    stdin, stdout, stderr, status_fd = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)  # dup2 leaves 0-2 inheritable, as an exec'd service has them
        os.close(fd)
    for sig in _RESET:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.setpgrp()  # supervisord puts every program in its own group: a terminal's ^C is not theirs
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in message["env"].items()})
    os.chdir(message["cwd"])
    os.umask(int(message["umask"]))
    random.seed()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.getLogger("pktscope.zygote").disabled = True
    # supervisord's death reaches the client (its parent-death signal), which stops us with
    # SIGTERM; the zygote is our parent, and its death must not stop services (shared/parent_watch)
    parent_watch.TIED_ELSEWHERE = True
    _name_process(str(message["module"]), [str(a) for a in message["argv"]])
    status = socket.socket(fileno=status_fd)
    threading.Thread(target=_watch_client, args=(status,), name="client-watch", daemon=True).start()
    return status


def _name_process(module: str, argv: list[str]) -> None:
    """``ps``/``top`` show the zygote's command line for a fork; the kernel name says which service.

    PR_SET_NAME sets the 15-byte ``comm`` (``ps -o comm``, ``top``, psutil's ``name()``), e.g.
    ``pks-decoder-1``; rewriting the full command line needs setproctitle, not a dependency.
    """
    name = "pks-" + module.rsplit(".", 1)[-1]
    if "--index" in argv[:-1]:
        name += "-" + argv[argv.index("--index") + 1]
    set_kernel_name(name)


def set_kernel_name(name: str) -> None:
    """This process's 15-byte kernel name (``comm``), where the kernel lets us set it."""
    with contextlib.suppress(OSError, AttributeError):
        parent_watch._libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _watch_client(status: socket.socket) -> None:
    """The client was killed (its end of the pair closed): die as it did, even with no zygote."""
    try:
        while status.recv(64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _run(module: str, argv: list[str]) -> int:
    """``python -m module argv``: run its ``__main__`` as the main module; the exit code it gives."""
    sys.argv = [module, *argv]  # runpy puts the module's file name first, as -m does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT  # python -m dies of SIGINT then: so do we
    except BaseException:  # noqa: BLE001 - as the interpreter does: print it, exit 1
        traceback.print_exc()
        return 1
    return 0


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _shutdown(code: int) -> int:
    """What Py_Finalize does before the process exits: threads joined, atexit run, streams flushed."""
    try:
        threading._shutdown()  # type: ignore[attr-defined] - the interpreter's own join of non-daemon threads
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code
