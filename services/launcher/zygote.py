"""The zygote: imports every service module a run needs once, then forks services on request.

    python -m services.launcher.zygote --fd N MODULE [MODULE...]

`pktscope run` (services/launcher/start.py) binds the listening unix socket first (mode 0600 in
the private run directory), so clients can connect the moment supervisord starts them; their
requests wait in the backlog while the imports finish. It imports the modules itself
(``preload``) and forks the zygote from itself (``become_zygote``), or, where it cannot fork
safely, starts it as the command above (fd N). Nothing here opens a ZeroMQ context, a Redis
connection or a thread before forking: a forked child must not inherit live sockets or locks
held by threads that do not exist in it.

Per client connection it forks one service (``child.py`` turns the child into it), sends the
client the pid, kills the service if the client's connection closes (the client was killed), and
sends the wait status when the service ends. If the zygote dies, running services carry on and
report to their clients over the status pair; new clients exec the service directly.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import NoReturn

from services.launcher import child, protocol

log = logging.getLogger("pktscope.zygote")

# what every service imports at its first Redis call or metadata lookup (redis-py's ``secrets``,
# importlib.metadata's ``email.parser``): 2-5 ms of each child's start-up, once here instead
COMMON_PRELOAD = ("secrets", "hmac", "email.parser")
LOG_FORMAT = "%(asctime)s zygote%(process)d %(levelname)s %(message)s"
LINGER = 15.0  # seconds to wait for running services at our stop: past supervisord's stopwaitsecs (10)


def _warm_caches() -> None:
    """Fill the caches every service fills at its first Redis connection, so that each child
    inherits them filled: redis-py asks importlib.metadata for its own version (cached) when
    it makes a connection, 5-7 ms of every service's start-up before its first command."""
    try:
        from redis.utils import get_lib_version

        get_lib_version()
    except Exception as exc:  # noqa: BLE001 - another redis-py: each child does its own
        log.warning("warming redis-py's version cache failed (%s)", exc)


class Zygote:
    """The accept/fork/reap loop over one listening socket."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}  # service pid -> its client's connection
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.refuse = ""  # why forking is unsafe (a thread appeared): clients exec instead

    def preload(self, modules: list[str]) -> None:
        """Import what the services need (``preload``), then get ready to fork."""
        preload(modules)
        self.ready_to_fork()

    def ready_to_fork(self) -> None:
        """Refuse to fork where a thread exists (``preload`` has frozen the start-up objects)."""
        if threading.active_count() > 1:
            self.refuse = f"{threading.active_count()} threads after the imports; forking is unsafe"
            log.warning("%s: clients start their services directly", self.refuse)

    def serve(self) -> None:
        """Until SIGTERM (then until its services ended): fork on requests, kill orphaned services, report ended ones."""
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_a: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._reap)
        deadline = 0.0
        while True:
            if self.stopping and not deadline:
                # no new services; those running (a `pktscope run` killed at once stops
                # supervisord and us together) are still reaped and reported as they stop
                self.selector.unregister(self.listener)
                self.listener.close()
                deadline = time.monotonic() + LINGER
            if deadline and (not self.children or time.monotonic() > deadline):
                break
            for key, _ in self.selector.select(timeout=0.2 if deadline else None):
                try:
                    key.data(key.fileobj)
                except Exception:  # one client's trouble must not end the zygote for the others
                    log.exception("handling %s", key.fileobj)
        self.selector.close()

    def _stop(self, *_a: object) -> None:
        self.stopping = True

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(5.0)  # a client sends its request at once; a stuck one must not hold us
        try:
            message, fds = protocol.receive(conn, maxfds=4)
        except (OSError, ValueError):
            message, fds = None, []
        conn.settimeout(None)
        if message is None or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            if self.refuse:
                raise OSError(self.refuse)
            pid = os.fork()
        except OSError as exc:  # EAGAIN, ENOMEM, or unsafe: the client execs its service
            self._close_all(fds)
            with contextlib.suppress(OSError):
                protocol.send(conn, {"error": str(exc)})
            conn.close()
            return
        if pid == 0:
            try:
                self._in_child(conn, message, fds)
            finally:
                os._exit(1)  # never back into the zygote's loop, whatever happened
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, self._client_gone)
        with contextlib.suppress(OSError):  # the client is gone already: its EOF kills the service
            protocol.send(conn, {"pid": pid})

    def _in_child(self, conn: socket.socket, message: dict, fds: list[int]) -> None:
        """Drop every zygote resource, then become the service; never returns."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for sock in (self.listener, conn, *self.children.values()):
            sock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        child.become(message, fds)

    def _client_gone(self, conn: socket.socket) -> None:
        """The client's connection closed (or spoke out of turn): it was killed, so is its service."""
        pid = next((p for p, c in self.children.items() if c is conn), None)
        self.selector.unregister(conn)
        conn.close()
        if pid is not None:
            del self.children[pid]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # reaped by _reap, with nobody left to tell

    def _reap(self, wake: int) -> None:
        try:
            while os.read(wake, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            self.selector.unregister(conn)
            with contextlib.suppress(OSError):
                protocol.send(conn, {"status": status})
            conn.close()

    @staticmethod
    def _close_all(fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)


def preload(modules: list[str]) -> None:
    """Import each service's entry point and service module; a failure only costs the child time.

    Run by the zygote, or by `pktscope run` itself before it forks the zygote (``become_zygote``).
    The collector is off while the modules import, and what they made is frozen (``gc.freeze``:
    out of its sight for good, fewer pages copied by the children) before it is on again: nearly
    all of it (modules, classes, tables) lives as long as the process, so the ~110 young
    collections the imports set off were wasted (no full collection either: it found nothing
    after the imports and took 17 ms): 0.182 -> 0.170 CPU s for a replay's five services, on the
    first packet's critical path (medians of 10 alternations; docs/benchmarks.md, 2026-12-05 (4)).
    What stays uncollected is the few cycles the imports drop, such as the services' ``__main__``
    modules let go below: kilobytes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        _import_all(modules)
        _warm_caches()
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _import_all(modules: list[str]) -> None:
    """``preload``'s imports: the common modules, then each service's and what its main names."""
    names = list(COMMON_PRELOAD)
    for module in modules:
        names += [f"{module}.service", f"{module}.__main__"]
    while names:
        name = names.pop(0)
        try:
            if importlib.util.find_spec(name) is None:
                continue
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the child imports it again and reports
            log.warning("preloading %s failed (%s); its service imports it itself", name, exc)
            continue
        if name.endswith(".__main__"):
            # what main imports lazily (services/decoder/__main__.py PRELOAD, ...)
            names += list(getattr(mod, "PRELOAD", ()))
            # its imports stay loaded; runpy runs it afresh as __main__ in the child (and
            # warns if it is in sys.modules already)
            del sys.modules[name]


def become_zygote(listener: socket.socket, log_fd: int, parent: int) -> NoReturn:
    """In a child forked by `pktscope run` after its ``preload``: become the zygote; never returns.

    The CLI's own frames stay below this one and must never resume (their ``finally`` would
    release the run's lock, stop supervisord...): whatever happens, this ends in ``os._exit``.
    """
    code = 1
    try:
        os.setsid()  # its own session, as supervisord's: a Ctrl-C reaches the CLI, which stops all in order
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # every other descriptor of the CLI (the run's lock, supervisord's pipes) is not ours: the
        # lock would stay held while we and the services forked from us live
        keep = listener.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, _max_fd())
        for stream in (sys.stdout, sys.stderr):  # as PYTHONUNBUFFERED: a service's output is not held back
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True, write_through=True)
        logging.basicConfig(level="INFO", format=LOG_FORMAT, force=True)
        from shared.parent_watch import die_with_parent

        die_with_parent(signal.SIGTERM, expected_parent=parent)
        # ps/top show the CLI's command line for the forked zygote; the kernel name says what it is
        child.set_kernel_name("pks-zygote")
        zygote = Zygote(listener)
        zygote.ready_to_fork()
        log.info("ready: %d modules loaded (forked from pktscope run)", len(sys.modules))
        zygote.serve()
        code = 0
    except BaseException:  # noqa: BLE001 - printed to the zygote's log; the CLI's frames must not resume
        traceback.print_exc()
    finally:
        logging.shutdown()
        os._exit(code)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.launcher.zygote", description=__doc__)
    ap.add_argument("--fd", type=int, required=True, help="the bound, listening unix socket")
    ap.add_argument("modules", nargs="*", help="service packages to import before forking")
    args = ap.parse_args(argv)
    logging.basicConfig(level="INFO", format=LOG_FORMAT)
    # our start-up: tied to `pktscope run`, which also stops us; its services are not tied to us
    from shared.parent_watch import die_with_parent

    die_with_parent(signal.SIGTERM, expected_parent=os.getppid())
    log.info("preloading %s", " ".join(args.modules) or "nothing")
    listener = socket.socket(fileno=args.fd)
    listener.setblocking(False)
    zygote = Zygote(listener)
    zygote.preload(args.modules)
    log.info("ready: %d modules loaded in %.3f CPU s", len(sys.modules), time.process_time())
    zygote.serve()
    return 0


if __name__ == "__main__":
    code = main()
    # Nothing is left to tear down: every service has ended and the log is line-buffered. Tearing
    # down the preloaded modules took 10-20 ms at the end of every command, which waits for us.
    logging.shutdown()
    os._exit(code)
