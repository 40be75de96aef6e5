"""`pktscope run`'s side of the fork launcher: the zygote's socket and process, and the commands.

The CLI binds the socket itself (mode 0600 in the private run directory) and hands the bound fd
to the zygote, so the socket exists before supervisord starts any client: a client that comes
before the zygote has finished its imports waits in the backlog instead of finding nothing. The
zygote starts right before supervisord and imports while supervisord and Redis start.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from shared.config import PipelineConfig
from shared.processes import wait_or_kill

CLIENT = Path(__file__).resolve().parent / "client.py"
LAUNCHERS = ("fork", "exec")


def socket_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "zygote.sock"


def pid_path(run_dir: str | Path) -> Path:
    """Where the running zygote's pid is (for `kill`, and the tests that kill it)."""
    return Path(run_dir) / "zygote.pid"


def command_prefix(cfg: PipelineConfig, python: str) -> str:
    """What comes before ``services.NAME ARGS`` in a supervisord command for ``cfg.launcher``.

    exec: ``python -m`` (a full interpreter per service). fork: the thin client, ``-S -I`` so it
    loads neither site-packages nor the environment's PYTHON* settings (its own start-up is
    ~15 ms); the service itself gets the client's environment.
    """
    if cfg.launcher == "fork":
        return " ".join(shlex.quote(str(a)) for a in (python, "-S", "-I", CLIENT, socket_path(cfg.run_dir)))
    return f"{shlex.quote(python)} -m"


class ZygoteProcess:
    """The zygote of one run: started before supervisord, stopped after it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    def start(self, modules: list[str], python: str = sys.executable) -> None:
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
        logs = self.run_dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            with open(logs / "zygote.log", "ab") as log:
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

    def ask_to_stop(self) -> None:
        """SIGTERM it without waiting: its exit then overlaps supervisord's (``stop`` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop it (its services are stopped already); the socket goes with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.ask_to_stop()
            wait_or_kill(self.proc, timeout)
        socket_path(self.run_dir).unlink(missing_ok=True)
        pid_path(self.run_dir).unlink(missing_ok=True)


def service_modules(cfg: PipelineConfig) -> list[str]:
    """The packages the zygote imports for this host's programs (services/cli/programs.py)."""
    from services.cli.programs import programs

    return [p.module for p in programs(cfg) if p.module]
