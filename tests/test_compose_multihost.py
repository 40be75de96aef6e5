"""compose/multihost/docker-compose.yml must run the real flags: there is no docker here, so each
pktscope command in it is parsed by pktscope's own argparser and built into a pipeline config,
and the sensors and the pool must agree on the shard endpoints."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.cli import main as cli_main
from services.cli.programs import programs
from services.cli.run import build_config
from shared.curve import create_keys
from tests.conftest import ROOT

COMPOSE = ROOT / "compose" / "multihost" / "docker-compose.yml"
ENV = {"SENSOR_IFACE": "eth0", "POOL_HOST": "10.0.0.9", "SENSOR_NAME": "web-1"}
_VAR = re.compile(r"\$\{(\w+)(?::[-?][^}]*)?\}")


def _substitute(arg: str) -> str:
    """compose's ${NAME:-default} / ${NAME:?error}, with the values an operator would set."""
    return _VAR.sub(lambda m: ENV[m.group(1)], arg)


def _commands() -> dict[str, list[str]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        name: [_substitute(str(a)) for a in svc["command"]]
        for name, svc in services.items()
        if svc.get("command", [None])[0] == "pktscope"
    }


def _config(argv: list[str], tmp_path: Path, keys: Path):
    """The command's flags through the real parser; paths inside the container moved to tmp_path."""
    moved = {"/keys": str(keys), "/run/pktscope": str(tmp_path / "run")}
    args = cli_main.build_parser().parse_args(
        [moved.get(a, a) for a in argv[1:]] + ["--state-dir", str(tmp_path)]
    )
    return build_config(args)


def test_the_multihost_example_parses_and_its_sensor_reaches_every_pool_shard(tmp_path):
    commands = _commands()
    assert set(commands) == {"pool", "sensor"}
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["pool"]["profiles"] == ["pool"] and services["sensor"]["profiles"] == ["sensor"]
    pool_keys, sensor_keys = tmp_path / "keys-pool", tmp_path / "keys-sensor"
    create_keys(pool_keys, "web-1")
    (sensor_keys / "clients").mkdir(parents=True)
    (sensor_keys / "server.key").write_bytes((pool_keys / "server.key").read_bytes())
    for suffix in (".key", ".key_secret"):
        (sensor_keys / "clients" / f"web-1{suffix}").write_bytes(
            (pool_keys / "clients" / f"web-1{suffix}").read_bytes()
        )

    pool = _config(commands["pool"], tmp_path / "p", pool_keys)
    sensor = _config(commands["sensor"], tmp_path / "s", sensor_keys)
    assert pool.role == "pool" and sensor.role == "sensor"
    assert pool.link_curve_dir and sensor.link_curve_dir, "both ends of the link use CURVE"
    assert sensor.sensor_name == "web-1" and sensor.link_client == "web-1"
    assert sensor.detectors == pool.detectors == 2
    # every stage after capture is sharded on the sensor, and the pool runs only its share
    assert sensor.flowtrackers == 2 and sensor.decoders == 2
    assert {p.name for p in programs(sensor)} >= {"capture", "decoder", "flowtracker"}
    assert {p.name for p in programs(pool)} >= {"detector", "observer"}
    assert not {"capture", "decoder", "flowtracker"} & {p.name for p in programs(pool)}
    pool_ports = [int(pool.detector_endpoint_of(k).rsplit(":", 1)[1]) for k in range(pool.detectors)]
    sensor_ports = [int(e.rsplit(":", 1)[1]) for e in sensor.pool_endpoints]
    assert sensor_ports == pool_ports
    published = {int(p) for spec in services["pool"]["ports"] for p in _port_range(spec.split(":")[0])}
    assert set(pool_ports) <= published, "the pool publishes every shard's port"
    assert services["sensor"]["network_mode"] == "host" and "NET_RAW" in services["sensor"]["cap_add"]


def _port_range(spec: str) -> range:
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi or lo) + 1)
