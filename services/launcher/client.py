"""What supervisord runs for a service when the launcher is "fork": a thin stand-in process.

    python -S -I services/launcher/client.py ZYGOTE_SOCKET MODULE [ARG...]

It starts in milliseconds (no site, no package, built-in modules only: ``_socket`` and
``_signal`` rather than ``socket`` and ``signal``, whose ``enum`` import alone doubled its
start-up), asks the zygote to fork MODULE with ARGs, its stdin/stdout/stderr (so supervisord's
log capture works), its environment, working directory and umask, and then stands in for the
service: signals it gets (supervisord's SIGTERM stop, a Ctrl-C) go to the service, and it exits
the way the service did (its code, or killed by the same signal), so supervisord's restart, stop
and exit-code handling sees the service itself. If the zygote cannot be reached it becomes the
service the old way (``exec python -m MODULE``): nothing depends on the zygote being up.

If this client dies (kill -9), its service dies with it: the zygote watches the connection and
the service watches its end of the status pair. If supervisord dies, the kernel sends this
client SIGTERM (parent-death signal) and the service stops as it does under exec.
"""

from __future__ import annotations

import _signal
import _socket
import os
import select
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import protocol  # noqa: E402 - beside this file; -I keeps the script's directory off sys.path

RELAYED = (
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
PR_SET_PDEATHSIG = 1


class Client:
    """One service's stand-in: the zygote connection, the status pair, the signals to relay."""

    def __init__(self, socket_path: str, module: str, args: list[str]) -> None:
        self.socket_path = socket_path
        self.module = module
        self.args = args
        self.pid = 0
        self.pending: list[int] = []

    def relay(self, sig: int, _frame: object = None) -> None:
        """Pass a signal on to the service; before it is forked, hold it until it is."""
        if self.pid:
            try:  # noqa: SIM105 - contextlib is one import more in the client's start-up
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        else:
            self.pending.append(sig)

    def exec_directly(self, why: str) -> None:
        """The zygote is not there: become the service the way supervisord would start it."""
        print(f"pktscope launcher: {why}; starting {self.module} directly", file=sys.stderr, flush=True)
        for sig in RELAYED:
            _signal.signal(sig, _signal.SIG_DFL)
        for sig in self.pending:  # came before the service could be started: as under exec, they end it
            os.kill(os.getpid(), sig)
        os.execv(sys.executable, [sys.executable, "-m", self.module, *self.args])

    def run(self) -> None:
        """Ask for the service, then wait for its end; never returns."""
        for sig in RELAYED:
            _signal.signal(sig, self.relay)
        _die_with_parent()
        try:
            zygote = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            zygote.connect(self.socket_path)
        except OSError as exc:
            self.exec_directly(f"no zygote at {self.socket_path} ({exc.strerror or exc})")
        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        umask = os.umask(0o077)
        os.umask(umask)
        request = {
            "module": self.module,
            "argv": self.args,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "umask": umask,
        }
        try:
            protocol.send(zygote, request, [0, 1, 2, theirs.fileno()])
            reply, _ = protocol.receive(zygote)
        except (OSError, ValueError) as exc:
            reply = {"error": str(exc)}
        theirs.close()
        if reply is None or "pid" not in reply:
            zygote.close()
            mine.close()  # a child forked before the zygote died sees this and stops
            self.exec_directly(f"the zygote did not fork it ({(reply or {}).get('error', 'it went away')})")
        self.pid = int(reply["pid"])
        for sig in self.pending:
            self.relay(sig)
        self.pending.clear()
        self.wait(zygote, mine)

    def wait(self, zygote: _socket.socket, mine: _socket.socket) -> None:
        """The zygote's wait status if it is there; else the service's own word on the pair."""
        code: int | None = None
        watched = [zygote, mine]
        while watched:
            ready, _, _ = select.select(watched, [], [])
            if zygote in ready:
                message, _ = _receive(zygote)
                if message is not None and "status" in message:
                    _exit_like(os.waitstatus_to_exitcode(int(message["status"])))
                watched.remove(zygote)  # it died: the pair tells the rest
            if mine in ready:
                message, _ = _receive(mine)
                if message is not None:
                    code = int(message.get("code", 1))
                else:
                    watched.remove(mine)  # the service is gone; the zygote's status may follow
        # no wait status to come: its code if it gave one, else it was killed
        _exit_like(code if code is not None else -_signal.SIGKILL)


def _receive(sock: _socket.socket) -> tuple[dict | None, list[int]]:
    try:
        return protocol.receive(sock)
    except ValueError:
        return None, []


def _exit_like(code: int) -> None:
    """Exit with the service's code, or die of the signal that killed it (negative code)."""
    if code >= 0:
        os._exit(code)
    sig = -code
    if sig != _signal.SIGKILL:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the service's core, not ours
            _signal.signal(sig, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [sig])
        except (ImportError, OSError, ValueError):
            pass
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is not to die


def _die_with_parent() -> None:
    """SIGTERM when supervisord dies (kill -9 included): relayed, the service stops as under exec."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(_signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), _signal.SIGTERM)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        print("usage: client.py ZYGOTE_SOCKET MODULE [ARG...]", file=sys.stderr)
        os._exit(2)
    Client(argv[0], argv[1], argv[2:]).run()


if __name__ == "__main__":
    main(sys.argv[1:])
