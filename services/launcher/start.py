"""`pktscope run`'s side of the fork launcher: the zygote's socket and process, and the commands.

The CLI binds the socket itself (mode 0600 in the private run directory) and hands the bound fd
to the zygote, so the socket exists before supervisord starts any client: a client that comes
before the zygote has finished its imports waits in the backlog instead of finding nothing.
`pktscope run` binds it, starts supervisord, imports the services' modules itself while
supervisord and Redis start, and forks the zygote from itself (``fork``): the CLI needs most of
those modules too (redis-py), and one import serves both. ``start`` runs the zygote as its own
interpreter instead (where this process has a thread, and in the launcher's tests).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shared.config import PipelineConfig
from shared.processes import wait_or_kill

CLIENT = Path(__file__).resolve().parent / "client.py"
NATIVE_CLIENT = CLIENT.parent / "build" / "pks-launch"  # client.c, built by scripts/setup
LAUNCHERS = ("fork", "exec")


def socket_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "zygote.sock"


def pid_path(run_dir: str | Path) -> Path:
    """Where the running zygote's pid is (for `kill`, and the tests that kill it)."""
    return Path(run_dir) / "zygote.pid"


def command_prefix(cfg: PipelineConfig, python: str) -> str:
    """What comes before ``services.NAME ARGS`` in a supervisord command for ``cfg.launcher``.

    exec: ``python -m`` (a full interpreter per service). fork: the thin client, in C
    (``NATIVE_CLIENT``, about 0.5 ms of CPU to start) where scripts/setup built it from the
    current source, else ``python -S -I client.py`` (no site-packages nor the environment's
    PYTHON* settings: 6-10 ms); the service itself gets the client's environment.
    """
    if cfg.launcher != "fork":
        return f"{shlex.quote(python)} -m"
    if native_client_usable():
        parts = (NATIVE_CLIENT, python, socket_path(cfg.run_dir))
    else:
        parts = (python, "-S", "-I", CLIENT, socket_path(cfg.run_dir))
    return " ".join(shlex.quote(str(a)) for a in parts)


def native_client_usable() -> bool:
    """The C client is built, runnable, and not older than its source or the protocol it speaks."""
    try:
        built = NATIVE_CLIENT.stat()
        sources = max((CLIENT.parent / name).stat().st_mtime for name in ("client.c", "protocol.py"))
    except OSError:
        return False
    return built.st_mtime >= sources and os.access(NATIVE_CLIENT, os.X_OK)


class ForkedProcess:
    """A child this process forked, with what ``subprocess.Popen`` offers for one we spawned."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None and self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ZygoteProcess:
    """The zygote of one run: started before supervisord, stopped after it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc: subprocess.Popen | ForkedProcess | None = None
        self.listener: socket.socket | None = None

    def listen(self) -> None:
        """Bind the zygote's socket now: supervisord's clients may connect before the zygote runs
        (they wait in the backlog); ``start`` or ``fork`` hand it over."""
        if self.listener is None:
            self.listener = self._bind()

    def _take_listener(self) -> socket.socket:
        listener, self.listener = self.listener or self._bind(), None
        return listener

    def _bind(self) -> socket.socket:
        """The bound, listening socket (mode 0600 in the private run directory)."""
        path = socket_path(self.run_dir)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(64)
        return listener

    def _log_path(self) -> Path:
        logs = self.run_dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        return logs / "zygote.log"

    def start(self, modules: list[str], python: str = sys.executable) -> None:
        """The zygote as its own interpreter: it imports ``modules`` while we go on."""
        listener = self._take_listener()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            with open(self._log_path(), "ab") as log:
                # its own session, as supervisord's: a Ctrl-C reaches the CLI, which stops all in order
                self.proc = subprocess.Popen(
                    [python, "-m", "services.launcher.zygote", "--fd", str(listener.fileno()), *modules],
                    pass_fds=[listener.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
        finally:
            listener.close()
        pid_path(self.run_dir).write_text(f"{self.proc.pid}\n")

    def fork(self, modules: list[str], before_fork: Callable[[], None] | None = None) -> None:
        """Import ``modules`` in this process, then fork the zygote from it (``before_fork``
        ends what must not run across the fork: a thread of ours).

        `pktscope run` needs redis-py and most of what the services import anyway: importing it
        once, here, instead of in a zygote of its own and again in the CLI saves 0.15 CPU s of
        every run's start (redis-py 8 alone imports in 0.11-0.15 s; docs/benchmarks.md). With a
        thread in this process forking is unsafe, and the zygote is started on its own instead.
        """
        from services.launcher import zygote

        zygote.preload(modules)
        if before_fork is not None:
            before_fork()
        if threading.active_count() > 1:  # a thread we could not end, or one an import started
            self.start(modules)
            return
        listener = self._take_listener()
        log_fd = os.open(self._log_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # nothing of ours written twice
            stream.flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(log_fd)
            self.listener = listener
            self.start(modules)
            return
        if pid == 0:
            zygote.become_zygote(listener, log_fd, parent)  # never returns
        listener.close()
        os.close(log_fd)
        self.proc = ForkedProcess(pid)
        pid_path(self.run_dir).write_text(f"{pid}\n")

    def ask_to_stop(self) -> None:
        """SIGTERM it without waiting: its exit then overlaps supervisord's (``stop`` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop it (its services are stopped already); the socket goes with it."""
        if self.listener is not None:  # bound, never handed over
            self.listener.close()
            self.listener = None
        if self.proc is not None and self.proc.poll() is None:
            self.ask_to_stop()
            wait_or_kill(self.proc, timeout)
        socket_path(self.run_dir).unlink(missing_ok=True)
        pid_path(self.run_dir).unlink(missing_ok=True)


def service_modules(cfg: PipelineConfig) -> list[str]:
    """The packages the zygote imports for this host's programs (services/cli/programs.py)."""
    from services.cli.programs import programs

    return [p.module for p in programs(cfg) if p.module]
