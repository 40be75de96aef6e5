"""`pktscope systemd`: systemd units for one host's role, from the config `pktscope run` would use.

Takes every flag of `pktscope run` (services/cli/run.py ``add_arguments``), builds the same
PipelineConfig, and writes into ``--out``:

* ``pipeline.json`` (install as ``<etc>/pipeline.json``) and ``pktscope.env`` (the services'
  environment);
* one unit per program of services/cli/programs.py ``programs(cfg)`` -- the list supervisord's
  config is cut to -- with the sharded stages as templates (``pktscope-decoder@.service``,
  ``pktscope-flowtracker@.service``, ``pktscope-detector@.service``, instance = ``--index``);
* the role's target (``pktscope.target`` for all, ``pktscope-sensor.target``,
  ``pktscope-pool.target``) wanting every instance.

Units do not depend on the role (ordering to a unit a host lacks is ignored by systemd), so
the files of several roles can share one directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
from pathlib import Path

from services.cli.common import CliError
from services.cli.programs import Program, programs, roles_running
from shared.config import PipelineConfig

TARGETS = {"all": "pktscope.target", "sensor": "pktscope-sensor.target", "pool": "pktscope-pool.target"}
DESCRIPTIONS = {
    "redis": "private redis-server (baseline, stats, alert stream)",
    "procwatch": "procwatch (process attribution from kernel events, eBPF)",
    "notifier": "notifier (notifications, --notify)",
    "exporter": "exporter (Prometheus metrics, --metrics-listen)",
    "observer": "observer (live view for pktscope inspect, EVE log)",
    "detector": "detector shard %i (baseline, signals, alerts)",
    "flowtracker": "flow-tracker shard %i",
    "decoder": "decoder %i",
    "capture": "capture (packets -> decoders)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from services.cli.run import add_arguments

    p = sub.add_parser(
        "systemd",
        help="write systemd units, targets and the pipeline config for one host's role",
        description="Write the systemd units of the programs `pktscope run` with the same flags would "
        "start under supervisord (every role: --role all|sensor|pool), the role's target and "
        "pipeline.json. Then: cp OUT/*.service OUT/*.target /etc/systemd/system/; "
        "cp OUT/pipeline.json OUT/pktscope.env ETC/; systemctl daemon-reload; systemctl enable --now TARGET.",
    )
    add_arguments(p)
    p.add_argument("--out", type=Path, default=Path("pktscope-systemd"), help="directory to write (default ./pktscope-systemd)")
    p.add_argument("--etc", default="/etc/pktscope", help="where pipeline.json and pktscope.env go (default /etc/pktscope)")
    p.add_argument("--python", default=sys.executable, help=f"the interpreter with pktscope installed (default {sys.executable})")
    p.set_defaults(func=run, run_dir=Path("/run/pktscope"), state_dir=Path("/var/lib/pktscope"))


def unit_name(prog: Program, instance: int | str | None = None) -> str:
    """``pktscope-NAME.service``, or ``pktscope-NAME@I.service`` for a sharded stage."""
    if prog.indexed:
        return f"pktscope-{prog.name}@{'' if instance is None else instance}.service"
    return f"pktscope-{prog.name}.service"


def instances(prog: Program) -> list[str]:
    return [unit_name(prog, i) for i in range(prog.instances)] if prog.indexed else [unit_name(prog)]


def redis_argv(cfg: PipelineConfig) -> list[str]:
    """The private redis-server, as compose/redis-program.conf.tmpl runs it under supervisord."""
    from shared.redis_server import AOF_REWRITE_MIN_SIZE  # (imports redis-py: only when asked)

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [
        exe, "--port", "0", "--unixsocket", f"{cfg.run_dir}/redis.sock", "--unixsocketperm", "700",
        "--dir", cfg.state_dir, "--dbfilename", "pktscope.rdb", "--save", "60 1",
        "--appendonly", "yes", "--appendfsync", "everysec", "--appenddirname", "pktscope-aof",
        "--appendfilename", "pktscope.aof", "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
        "--shutdown-on-sigterm", "nosave", "--daemonize", "no", "--protected-mode", "yes",
    ]  # fmt: skip


def every_program(cfg: PipelineConfig) -> list[Program]:
    """Every program any role of ``cfg``'s shard counts could run: the ordering of the units.

    Ordering against a unit this host does not have is ignored by systemd, so the units of
    every role are the same files (one directory can hold the sensor's and the pool's).
    """
    full = PipelineConfig.from_dict(dataclasses.asdict(cfg))
    full.role, full.redis_url, full.interface = "all", "", full.interface or "any"
    full.notify, full.metrics_listen = ["ordering"], "ordering"
    full.detector.attribute_processes, full.detector.attribution = True, "auto"
    return programs(full)


def render_unit(cfg: PipelineConfig, prog: Program, progs: list[Program], python: str, etc: str) -> str:
    """One unit file; started after every program of a lower priority (as supervisord orders them)."""
    before = [q for q in every_program(cfg) if q.priority < prog.priority]
    after = [u for q in before for u in instances(q)]
    wants = []
    if prog.name != "redis":
        if any(q.name == "redis" for q in progs):
            wants.append("pktscope-redis.service")
        else:
            after.append("redis-server.service")  # an external Redis on this host, if it is one
    targets = " ".join(TARGETS[r] for r in roles_running(prog.name))
    if prog.name == "redis":
        argv = redis_argv(cfg)
    else:
        argv = prog.argv(python, f"{etc}/pipeline.json", "%i" if prog.indexed else None)
    lines = [
        "# Written by `pktscope systemd` from the pipeline config; programs: services/cli/programs.py",
        "[Unit]",
        f"Description=pktscope {DESCRIPTIONS.get(prog.name, prog.name)}",
        f"PartOf={targets}",
    ]
    if after:
        lines.append(f"After={' '.join(after)}")
    if wants:
        lines.append(f"Wants={' '.join(wants)}")
    lines += ["", "[Service]", "Type=simple", f"EnvironmentFile=-{etc}/pktscope.env"]
    lines.append(f"ExecStart={shlex.join(argv)}")
    # as supervisord's autorestart=unexpected, exitcodes=0: a finished replay is not restarted
    lines.append("Restart=always" if prog.name == "redis" else "Restart=on-failure")
    lines.append("RestartSec=1")
    if cfg.run_dir.startswith("/run/"):
        lines += [f"RuntimeDirectory={cfg.run_dir[len('/run/'):]}", "RuntimeDirectoryPreserve=yes"]
    if prog.name == "redis" and cfg.state_dir.startswith("/var/lib/"):
        lines.append(f"StateDirectory={cfg.state_dir[len('/var/lib/'):]}")
    elif prog.name == "redis":
        # StateDirectory= only makes directories under /var/lib; redis-server exits 1 on a missing
        # --dir (found by starting the units under a real systemd: tests/test_systemd_boot.py)
        lines.append(f"ExecStartPre=/bin/mkdir -p -m 0700 {shlex.quote(cfg.state_dir)}")
    if prog.name == "capture":
        lines.append("AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN")
    if prog.name == "procwatch":
        lines.append("# needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); without it attribution uses psutil")
    lines += ["", "[Install]", f"WantedBy={targets}", ""]
    return "\n".join(lines)


def render_target(cfg: PipelineConfig, progs: list[Program]) -> str:
    units = [u for p in progs for u in instances(p)]
    return "\n".join(
        [
            f"# pktscope, role {cfg.role}: `systemctl enable --now {TARGETS[cfg.role]}` starts every instance below",
            "[Unit]",
            f"Description=pktscope network egress monitor (role {cfg.role})",
            f"Wants={' '.join(units)}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def write_units(cfg: PipelineConfig, out: Path, python: str, etc: str) -> list[Path]:
    """Write the role's units, its target, pipeline.json and pktscope.env; the paths written."""
    progs = programs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for prog in progs:
        path = out / unit_name(prog)
        path.write_text(render_unit(cfg, prog, progs, python, etc))
        written.append(path)
    target = out / TARGETS[cfg.role]
    target.write_text(render_target(cfg, progs))
    written.append(target)
    config = out / "pipeline.json"
    config.write_text(cfg.to_json() + "\n")
    env = out / "pktscope.env"
    env.write_text("# environment of every pktscope unit\nPYTHONUNBUFFERED=1\n")
    return [*written, config, env]


def run(args: argparse.Namespace) -> int:
    from services.cli.run import build_config

    cfg = build_config(args)
    # systemd starts, restarts and tracks each unit's own process (cgroup, watchdog, journal):
    # a service forked by a zygote outside the unit would escape its cgroup, so units exec
    cfg.launcher = "exec"
    if cfg.read_path:
        raise CliError("systemd units are for live capture: give --interface IFACE, not --read")
    try:
        written = write_units(cfg, args.out, args.python, args.etc.rstrip("/"))
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc}") from None
    print(f"pktscope: role {cfg.role}: {len(written)} files in {args.out}")
    for path in written:
        print(f"  {path.name}")
    print(f"then: systemctl daemon-reload && systemctl enable --now {TARGETS[cfg.role]}")
    return 0
