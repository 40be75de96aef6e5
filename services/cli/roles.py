"""`pktscope run --role`: one host's share of a pipeline spread over many hosts (issue 15).

* ``all`` (the default): every stage on this host, as always.
* ``sensor``: capture, decoders and flow-trackers on a monitored host; the flow-trackers send
  flow events over ZeroMQ TCP (CURVE) to the detector pool named by ``--pool``.
* ``pool``: the detector shards (and Redis, the alert outputs) for many sensors; shard ``k``
  binds ``--listen``'s port + ``k``.

Topology: one TCP endpoint per detector shard. A sensor routes each flow event to shard
``detector_of(row, K)`` (shared/routing.py) exactly as a single host does, so one host's
entities live in one shard, and lists the shards' endpoints in shard order in ``--pool`` (or
gives the first and ``--detectors K``: ports PORT..PORT+K-1).
"""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

from services.cli.common import CliError
from services.detector.sensor_entity import valid_sensor_name
from shared.config import PipelineConfig
from shared.curve import has_server_keys, is_local_endpoint

ROLES = ("all", "sensor", "pool")
_TCP = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})\Z")
# the programs each role runs: services/cli/programs.py (supervisord, systemd and compose alike)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many hosts (sensors and a detector pool; see README 'Scaling out')")
    g.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: the whole pipeline here (default); sensor: capture, decoders, flow-trackers, "
        "sending to --pool; pool: the detector shards for many sensors, on --listen",
    )
    g.add_argument(
        "--pool",
        default=None,
        metavar="tcp://HOST:PORT[,...]",
        help="sensor: the detector pool's shard endpoints in shard order (or the first one with --detectors K)",
    )
    g.add_argument(
        "--listen",
        default=None,
        metavar="tcp://ADDR:PORT",
        help="pool: where sensors connect; detector shard k listens on PORT + k "
        "(beyond loopback: CURVE keys from `pktscope keys`, or --insecure-listen)",
    )
    g.add_argument(
        "--sensor-name",
        default=None,
        help="sensor: the host name its entities carry, and the name of its CURVE key pair "
        f"<keys>/clients/NAME.key_secret (default this host's name: {_host_name()!r}); "
        "letters, digits, '.', '-', '_'",
    )
    g.add_argument(
        "--sensor-queue",
        type=int,
        default=None,
        metavar="FRAMES",
        help="sensor: frames kept per shard while the pool is unreachable, then dropped and counted (default 1000)",
    )
    g.add_argument(
        "--sensor-silence",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pool: how long a silent sensor may hold back the others' events (default 10)",
    )


def _host_name() -> str:
    name = socket.gethostname().split(".")[0]
    return name if valid_sensor_name(name) else "sensor"


def _tcp(flag: str, endpoint: str) -> tuple[str, int]:
    m = _TCP.match(endpoint.strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        raise CliError(f"{flag} {endpoint!r}: write tcp://HOST:PORT (e.g. tcp://10.0.0.9:5700)")
    return m.group(1), int(m.group(2))


def apply(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    """Check the role's flags against each other and put them in the config (CliError says how to fix)."""
    role = args.role
    cfg.role = role
    source = bool(args.read or args.interface)
    if role == "all":
        for flag, value in (
            ("--pool", args.pool),
            ("--listen", args.listen),
            ("--sensor-name", args.sensor_name),
        ):
            if value:
                raise CliError(f"{flag} needs --role sensor or --role pool")
        if not source:
            raise CliError("give a source: --read CAPTURE or --interface IFACE")
        return
    if args.sensor_queue is not None:
        if args.sensor_queue < 1:
            raise CliError(f"--sensor-queue must be >= 1, got {args.sensor_queue}")
        cfg.sensor_queue = args.sensor_queue
    if args.sensor_silence is not None:
        if args.sensor_silence <= 0:
            raise CliError(f"--sensor-silence must be > 0, got {args.sensor_silence}")
        cfg.sensor_silence = args.sensor_silence
    cfg.detector.attribute_processes = False  # the detector is on another host than the processes
    if role == "sensor":
        _sensor(args, cfg, source)
    else:
        _pool(args, cfg, source)


def _sensor(args: argparse.Namespace, cfg: PipelineConfig, source: bool) -> None:
    if not source:
        raise CliError("--role sensor needs a source: --interface IFACE (or --read CAPTURE)")
    if args.listen:
        raise CliError("--listen is the pool's; a sensor names the pool with --pool tcp://HOST:PORT")
    if not args.pool:
        raise CliError("--role sensor needs --pool tcp://HOST:PORT (the detector pool's --listen)")
    endpoints = [e.strip() for e in args.pool.split(",") if e.strip()]
    parsed = [_tcp("--pool", e) for e in endpoints]
    if len(endpoints) == 1 and cfg.detectors > 1:
        host, port = parsed[0]
        endpoints = [f"tcp://{host}:{port + k}" for k in range(cfg.detectors)]
    elif args.detectors is not None and args.detectors != len(endpoints):
        raise CliError(
            f"--detectors {args.detectors} but --pool lists {len(endpoints)} endpoint(s): "
            "list one per detector shard, or give one and --detectors K"
        )
    cfg.detectors = len(endpoints)
    cfg.pool_endpoints = endpoints
    name = args.sensor_name or _host_name()
    if not valid_sensor_name(name):
        raise CliError(f"--sensor-name {name!r}: use letters, digits, '.', '-' and '_' (at most 63)")
    cfg.sensor_name = name
    cfg.observer = False  # the pool runs the observer with its detectors
    keys_dir = Path(args.curve_keys or Path(cfg.state_dir) / "curve").resolve()
    client = name  # the pool takes a sensor's frames only under its key's name (pool_link.py)
    have = (keys_dir / "server.key").is_file() and (keys_dir / "clients" / f"{client}.key_secret").is_file()
    if have and not args.insecure_listen:
        cfg.link_curve_dir, cfg.link_client = str(keys_dir), client
        return
    if args.curve_keys is not None and not args.insecure_listen:
        raise CliError(
            f"--curve-keys {keys_dir}: needs server.key (the pool's public key) and "
            f"clients/{client}.key_secret; make them with `pktscope keys --dir DIR --client {client}` "
            "on the pool and copy them here"
        )
    if not args.insecure_listen and not all(is_local_endpoint(e) for e in endpoints):
        raise CliError(
            f"--pool {args.pool}: flow events would cross the network in the clear. Give the pool's keys "
            f"(--curve-keys DIR with server.key and clients/{client}.key_secret, from `pktscope keys "
            f"--client {client}` on the pool), or pass --insecure-listen"
        )
    cfg.insecure_listen = cfg.insecure_listen or bool(args.insecure_listen)


def _pool(args: argparse.Namespace, cfg: PipelineConfig, source: bool) -> None:
    if source:
        raise CliError("--role pool takes no --read/--interface: its sensors capture (--role sensor)")
    if args.pool or args.sensor_name:
        raise CliError("--pool and --sensor-name are a sensor's flags; a pool takes --listen tcp://ADDR:PORT")
    if not args.listen:
        raise CliError("--role pool needs --listen tcp://ADDR:PORT (tcp://127.0.0.1:5700 for this host only)")
    host, port = _tcp("--listen", args.listen)
    if port + cfg.detectors - 1 > 65535:
        raise CliError(f"--listen port {port} + {cfg.detectors} detector shards passes 65535")
    cfg.pool_listen = f"tcp://{host}:{port}"
    keys_dir = Path(args.curve_keys or Path(cfg.state_dir) / "curve").resolve()
    if has_server_keys(keys_dir) and not args.insecure_listen:
        cfg.link_curve_dir = str(keys_dir)
        return
    if args.curve_keys is not None and not args.insecure_listen:
        raise CliError(f"--curve-keys {keys_dir}: no server.key_secret there; make keys with `pktscope keys`")
    if not args.insecure_listen and not is_local_endpoint(cfg.pool_listen):
        raise CliError(
            f"--listen {args.listen} can be reached from other machines: make CURVE keys with "
            "`pktscope keys --client SENSOR` (encrypted, only authorized sensors), listen on "
            "tcp://127.0.0.1:PORT, or pass --insecure-listen to take flow events in the clear from anyone"
        )
    cfg.insecure_listen = cfg.insecure_listen or bool(args.insecure_listen)


def keep_programs(conf: str, cfg: PipelineConfig) -> str:
    """supervisord.conf with only the programs this host runs (services/cli/programs.py's list)."""
    from services.cli.programs import programs

    keep = {p.name for p in programs(cfg)}
    out: list[str] = []
    skipping = False
    for line in conf.splitlines(keepends=True):
        if line.startswith("["):
            section = line.strip()[1:-1]
            skipping = section.startswith("program:") and section.split(":", 1)[1] not in keep
        if not skipping:
            out.append(line)
    return "".join(out)
