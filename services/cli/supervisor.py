"""Running the pipeline under supervisord: write its config, start it, talk to it over XML-RPC."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

from services.launcher.start import command_prefix
from shared import parent_watch
from shared.config import PipelineConfig
from shared.parent_watch import die_with_parent
from shared.processes import wait_or_kill

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
# Installed without the source tree (a wheel), the templates ship beside this module.
if not (COMPOSE / "supervisord.conf.tmpl").exists():
    COMPOSE = Path(__file__).resolve().parent


def render_config(cfg: PipelineConfig, python: str = sys.executable) -> str:
    """supervisord.conf for this pipeline, from compose/supervisord.conf.tmpl."""
    redis_program = ""
    if not cfg.redis_url:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise FileNotFoundError(
                "redis-server is not installed: run scripts/setup (installs it), or pass --redis-url"
            )
        redis_program = Template((COMPOSE / "redis-program.conf.tmpl").read_text()).substitute(
            redis_server=redis_server,
            run_dir=cfg.run_dir,
            state_dir=cfg.state_dir,
            tie=parent_death_signal(python),
        )
    procwatch_program = ""
    if cfg.procwatch_enabled:
        procwatch_program = Template((COMPOSE / "procwatch-program.conf.tmpl").read_text()).substitute(
            launch=command_prefix(cfg, python), run_dir=cfg.run_dir
        )
    from services.cli.observe_programs import programs
    from services.cli.roles import keep_programs

    conf = Template((COMPOSE / "supervisord.conf.tmpl").read_text()).substitute(
        run_dir=cfg.run_dir,
        launch=command_prefix(cfg, python),
        decoders=cfg.decoders,
        captures=max(1, cfg.captures),
        capture_process="capture" if cfg.captures <= 1 else "capture-%(process_num)d",
        flowtrackers=max(1, cfg.flowtrackers),
        detectors=max(1, cfg.detectors),
        # one instance keeps the plain name; shards are numbered (shared/config.py)
        tracker_process="flowtracker" if cfg.flowtrackers <= 1 else "flowtracker-%(process_num)d",
        detector_process="detector" if cfg.detectors <= 1 else "detector-%(process_num)d",
        redis_program=redis_program,
        procwatch_program=procwatch_program,
        observe_programs=programs(cfg, python),
    )
    return keep_programs(conf, cfg)  # a sensor or a pool runs its share only


def parent_death_signal(python: str = sys.executable) -> str:
    """The command prefix that makes a program die with supervisord (see redis-program.conf.tmpl)."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return f"{shlex.quote(setpriv)} --pdeathsig TERM"
    return f"{shlex.quote(python)} -S -I {shlex.quote(parent_watch.__file__)}"


def _rpc_errors() -> tuple[type[BaseException], ...]:
    """What a failed call to supervisord raises. xmlrpc.client is imported here, at first use
    (10-20 ms): `pktscope run` starts the zygote and supervisord before it needs it."""
    import xmlrpc.client

    return (OSError, xmlrpc.client.Fault)


def running_pid(run_dir: Path) -> int | None:
    """The pid of a supervisord still running for this run directory, if any."""
    try:
        pid = int((run_dir / "supervisord.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


_DOWN = frozenset(("STOPPED", "EXITED", "FATAL", "BACKOFF"))
_ENDED = frozenset(("STOPPED", "EXITED", "FATAL"))  # BACKOFF is not: supervisord would start it again


class Supervisor:
    """A supervisord child process and an XML-RPC proxy to it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.conf = run_dir / "supervisord.conf"
        self.proc: subprocess.Popen | None = None
        self._nudger: threading.Thread | None = None
        self._nudge_stop = threading.Event()

    @property
    def rpc(self):
        """A fresh proxy per use: a failed call leaves supervisor's transport unusable."""
        # imported at first use (as xmlrpc.client, 10-20 ms): `pktscope run` starts the zygote
        # and supervisord before it
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1",
            SupervisorTransport(None, None, serverurl=f"unix://{self.run_dir}/supervisor.sock"),
        ).supervisor

    def start(self, config_text: str) -> None:
        """Start supervisord and return once it answers."""
        self.spawn(config_text)
        self.wait_running()

    def spawn(self, config_text: str, env: dict[str, str] | None = None) -> None:
        """Start supervisord; ``wait_running`` waits for it (the caller may do its own work between).
        ``env``: added to ours, for supervisord and every program it runs."""
        (self.run_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        self.conf.write_text(config_text)
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop the pipeline in order.
        # It gets SIGTERM (and stops everything it runs) if we die, kill -9 included.
        parent = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.supervisord_quick", "-c", str(self.conf)],
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM, expected_parent=parent),
            stdout=subprocess.DEVNULL,
            stderr=open(self.run_dir / "supervisord.stderr", "wb"),  # noqa: SIM115 - child owns it
            env={**os.environ, **env} if env else None,
        )
        self._nudge_stop.clear()
        self._nudger = threading.Thread(target=self._nudge, name="supervisord-nudge", daemon=True)
        self._nudger.start()

    def _nudge(self) -> None:
        """Connect to supervisord's socket the moment it listens: its loop's first turn waits up
        to a second for activity before it starts any program, and the caller may be busy (the
        services' imports, 0.2 s) before its first XML-RPC call, which was that activity."""
        assert self.proc is not None
        path = str(self.run_dir / "supervisor.sock")
        deadline = time.monotonic() + 15
        while not self._nudge_stop.is_set() and self.proc.poll() is None and time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(path)
                except OSError:  # not listening yet
                    pass
                else:
                    return  # an accepted connection that closes: one turn of the loop
            self._nudge_stop.wait(0.005)

    def stop_nudging(self) -> None:
        """End the nudging thread (before this process forks: no thread may be running then)."""
        self._nudge_stop.set()
        if self._nudger is not None:
            self._nudger.join()
            self._nudger = None

    def wait_running(self) -> None:
        assert self.proc is not None
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"supervisord exited at start; see {self.run_dir / 'supervisord.stderr'} "
                    f"and {self.run_dir / 'supervisord.log'}"
                )
            try:
                if self.rpc.getState()["statename"] == "RUNNING":
                    return
            except Exception:  # not listening yet: socket errors, http.client state errors
                pass
            time.sleep(0.01)  # up in ~0.1 s: polling slower only added to every start-up
        raise RuntimeError("supervisord did not come up within 15 s")

    def processes(self) -> list[dict]:
        try:
            return self.rpc.getAllProcessInfo()
        except Exception:  # supervisord going away mid-call
            return []

    def stop_group(self, name: str, timeout: float = 30.0) -> None:
        """Stop a group and return once all of its processes are down.

        supervisord notices a child's exit on the next turn of its event loop, and an idle loop
        turns once a second; a blocking ``stopProcessGroup(wait=True)`` therefore took a second
        per group. Asking for the state every 20 ms is activity that turns the loop at once.
        """
        errors = _rpc_errors()
        with contextlib.suppress(*errors):
            self.rpc.stopProcessGroup(name, False)
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            try:
                infos = [i for i in self.rpc.getAllProcessInfo() if i["group"] == name]
            except errors:
                return
            if all(i["statename"] in _DOWN for i in infos):
                return
            # most groups (a replay's redis-server) are down within 10 ms: look sooner at first
            polls += 1
            time.sleep(0.005 if polls <= 6 else 0.02)

    def shutdown(
        self, timeout: float = 30.0, stop_first: tuple[str, ...] = (), when_stopped: Callable[[], None] | None = None
    ) -> None:
        """Stop supervisord and everything it runs; ``stop_first`` groups are stopped in order first.

        supervisord's own shutdown stops one group per turn of its event loop, and a turn waits up
        to a second for activity: with redis last that took 3 s after a replay had finished.
        Stopping the groups over XML-RPC first (each call returns once its group is down) and
        then shutting down with nothing left running takes a few milliseconds.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        errors = _rpc_errors()
        try:
            infos = self.rpc.getAllProcessInfo()
        except errors:
            infos = None
        for group in stop_first:
            # A group that is absent (procwatch, notifier, ... when not asked for) or whose
            # processes all ended by themselves (a finished replay) has nothing to stop: two RPCs
            # each saved, 5-10 ms a group at the end of every replay.
            if infos is not None and all(i["statename"] in _ENDED for i in infos if i["group"] == group):
                continue
            self.stop_group(group)
        if when_stopped is not None:
            when_stopped()  # what may end beside supervisord's own shutdown (the zygote)
        try:
            self.rpc.shutdown()
        except errors:
            self.proc.send_signal(signal.SIGTERM)
        wait_or_kill(self.proc, timeout)
