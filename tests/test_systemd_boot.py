"""The units `pktscope systemd` writes, started and stopped by a real systemd (issue 15, acceptance 5).

systemd runs as PID 1 of private namespaces (tests/systemd_boot.py) with only our units in its
unit path. Role all on one booted "host"; a sensor and a detector pool on two, linked over TCP
with CURVE. Each starts with `systemctl start <role target>`, must see traffic on lo and raise its
alerts, list every instance in `pktscope status`, then stop with `systemctl stop` leaving no unit
running and none failed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli.systemd import TARGETS
from shared.curve import create_keys
from tests.conftest import ROOT
from tests.pipeline_helpers import free_port
from tests.systemd_boot import BootedSystemd, can_boot

pytestmark = [pytest.mark.live, pytest.mark.skipif(bool(can_boot()), reason=can_boot() or "-")]

REDIS = "unix:///run/pktscope/redis.sock"  # the private redis-server of a booted host (its /run)
PKTSCOPE = [sys.executable, "-m", "services.cli.main"]


def write_units(base: Path, argv: list[str]) -> tuple[Path, list[str]]:
    """`pktscope systemd ARGV` into base/units (pipeline.json and pktscope.env into base/etc, as an
    install copies them to /etc/pktscope); returns the units directory and the unit instances the
    role's target wants."""
    units, etc = base / "units", base / "etc"
    etc.mkdir(parents=True)
    done = subprocess.run(
        [*PKTSCOPE, "systemd", *argv, "--state-dir", str(base / "state"), "--out", str(units),
         "--etc", str(etc), "--python", sys.executable],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for name in ("pipeline.json", "pktscope.env"):
        shutil.move(units / name, etc / name)
    role = argv[argv.index("--role") + 1] if "--role" in argv else "all"
    target = (units / TARGETS[role]).read_text()
    wants = next(line for line in target.splitlines() if line.startswith("Wants="))
    return units, wants.removeprefix("Wants=").split()


def start(host: BootedSystemd, target: str, instances: list[str]) -> None:
    started = host.systemctl("start", target)
    assert started.returncode == 0, started.stderr
    host.wait(lambda: all(host.units().get(u) == "active" for u in instances), 30, f"{instances} active")


def stop(host: BootedSystemd, target: str) -> None:
    stopped = host.systemctl("stop", target)
    assert stopped.returncode == 0, stopped.stderr
    host.wait(lambda: not any(s in ("active", "deactivating") for s in host.units().values()), 30, "every unit stopped")
    failed = host.systemctl("list-units", "--failed", "--plain", "--no-legend").stdout.strip()
    assert not failed, failed


def send_udp(port: int, count: int = 5) -> None:
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"ping" * 8, ("127.0.0.1", port))


def alerts(host: BootedSystemd) -> list[dict]:
    out = host.run(*PKTSCOPE, "alerts", "list", "--json", "--redis-url", REDIS).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def status(host: BootedSystemd, etc: Path) -> dict:
    """`pktscope status --json` inside the booted host, with no flag: it finds the pipeline through
    the installed config (``PKTSCOPE_CONFIG``, /etc/pktscope/pipeline.json on a real install)."""
    done = host.run("env", f"PKTSCOPE_CONFIG={etc / 'pipeline.json'}", *PKTSCOPE, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def instance_names(instances: list[str]) -> set[str]:
    """Unit instances -> the service names `pktscope status` reports (decoder@1 -> decoder-1)."""
    names = set()
    for unit in instances:
        base = unit.removeprefix("pktscope-").removesuffix(".service")
        if base == "redis":
            continue
        name, _, index = base.partition("@")
        names.add(f"{name}-{index}" if index else name)
    return names


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path


def test_role_all_starts_sees_traffic_alerts_and_stops_under_systemd(base):
    port = free_port()
    units, instances = write_units(
        base,
        ["--interface", "lo", "--bpf", f"udp port {port}", "--decoders", "2", "--flowtrackers", "2",
         "--detectors", "2", "--learning", "0"],  # fmt: skip
    )
    host = BootedSystemd(units, base / "systemd.log")
    try:
        start(host, TARGETS["all"], instances)
        time.sleep(1.0)  # capture's socket is open once the unit runs; give the BPF filter a moment
        send_udp(port)
        found = host.wait(
            lambda: [a for a in alerts(host) if str(port) in json.dumps(a)], 30, "an alert for the test's traffic"
        )
        assert found[0]["kind"] in ("new_process_egress", "new_process_dest"), found
        seen = set(status(host, base / "etc")["services"])
        expected = instance_names(instances) - {"capture-0"} | {"capture"}  # one capture keeps its plain name
        assert expected <= seen, (expected, seen)
        stop(host, TARGETS["all"])
    finally:
        host.close()


def test_sensor_and_pool_roles_on_two_booted_hosts_over_curve(base):
    port, pool_port = free_port(), free_port()
    keys = base / "keys"
    create_keys(keys, "web-1")
    pool_units, pool_instances = write_units(
        base / "pool",
        ["--role", "pool", "--listen", f"tcp://127.0.0.1:{pool_port}", "--curve-keys", str(keys),
         "--detectors", "2", "--learning", "0"],  # fmt: skip
    )
    sensor_units, sensor_instances = write_units(
        base / "sensor",
        ["--role", "sensor", "--interface", "lo", "--bpf", f"udp port {port}", "--pool",
         f"tcp://127.0.0.1:{pool_port}", "--sensor-name", "web-1", "--curve-keys", str(keys),
         "--decoders", "2", "--flowtrackers", "2"],  # fmt: skip
    )
    pool = BootedSystemd(pool_units, base / "pool.log")
    sensor = None
    try:
        start(pool, TARGETS["pool"], pool_instances)
        sensor = BootedSystemd(sensor_units, base / "sensor.log")
        start(sensor, TARGETS["sensor"], sensor_instances)
        time.sleep(1.0)
        send_udp(port)
        found = pool.wait(
            lambda: [a for a in alerts(pool) if str(port) in json.dumps(a)], 30, "the pool's alert for the sensor's traffic"
        )
        assert "web-1" in found[0]["entity"], found[0]
        both = status(pool, base / "pool" / "etc")  # the pool lists the sensor's instances too (their stats come over the link)
        assert instance_names(pool_instances) <= set(both["services"]), both["services"].keys()
        on_sensor = set(both["sensors"].get("web-1", {}))
        wanted = instance_names(sensor_instances) - {"capture-0"} | {"capture"}
        pool.wait(lambda: wanted <= set(status(pool, base / "pool" / "etc")["sensors"].get("web-1", {})), 15, f"{wanted} on the pool")
        assert on_sensor or wanted
        stop(sensor, TARGETS["sensor"])
        stop(pool, TARGETS["pool"])
    finally:
        if sensor is not None:
            sensor.close()
        pool.close()
