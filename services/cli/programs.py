"""The processes one host runs for a pipeline config: one list for every launcher.

supervisord (services/cli/supervisor.py keeps only these programs in supervisord.conf), systemd
(services/cli/systemd.py writes a unit per program) and the compose checks (tests) all take the
programs from ``programs(cfg)``, so a role, a shard count or an optional service cannot be
started by one launcher and forgotten by another.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import PipelineConfig

# programs each role leaves to another host (README "Scaling out")
SENSOR_DROPS = ("detector", "observer", "notifier")
POOL_DROPS = ("capture", "decoder", "flowtracker", "procwatch")
ROLE_DROPS = {"all": (), "sensor": SENSOR_DROPS, "pool": POOL_DROPS}


@dataclass(frozen=True)
class Program:
    """One supervisord program / systemd unit: ``instances`` processes of ``python -m services.NAME``."""

    name: str
    instances: int = 1
    indexed: bool = False  # takes ``--index I`` (a sharded stage)
    priority: int = 50  # start order, lowest first (supervisord's priority)

    @property
    def module(self) -> str | None:
        """The ``python -m`` module; None for the private redis-server."""
        return None if self.name == "redis" else f"services.{self.name}"

    def argv(self, python: str, config: str, index: int | str | None = None) -> list[str]:
        """The command line of instance ``index`` (a str such as ``%i`` for a systemd template)."""
        if self.module is None:
            raise ValueError("redis-server's command line is the launcher's (its data directory)")
        out = [python, "-m", self.module, "--config", config]
        if self.indexed:
            out += ["--index", str(0 if index is None else index)]
        return out


def programs(cfg: PipelineConfig) -> list[Program]:
    """This host's programs for ``cfg`` (its role, shard counts and optional services), in start order."""
    out: list[Program] = []
    if not cfg.redis_url:
        out.append(Program("redis", priority=1))
    if cfg.procwatch_enabled:
        out.append(Program("procwatch", priority=5))
    if cfg.notify:
        out.append(Program("notifier", priority=5))
    if cfg.metrics_listen:
        out.append(Program("exporter", priority=5))
    out.append(Program("observer", priority=8))  # always: the live view of `pktscope inspect`
    out.append(Program("detector", max(1, cfg.detectors), True, 10))
    out.append(Program("flowtracker", max(1, cfg.flowtrackers), True, 20))
    out.append(Program("decoder", max(1, cfg.decoders), True, 30))
    out.append(Program("capture", max(1, cfg.captures), True, 40))  # --captures: AF_PACKET fanout
    drops = ROLE_DROPS.get(cfg.role, ())
    return [p for p in out if p.name not in drops]


def roles_running(name: str) -> list[str]:
    """The roles whose hosts run program ``name``."""
    return [role for role, drops in ROLE_DROPS.items() if name not in drops]
