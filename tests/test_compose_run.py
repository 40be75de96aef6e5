"""The compose files, run for real: podman + podman-compose, images built here (issue 15, acceptance 5:
"start-up and stop still work ... under compose for every role").

Each test copies one compose file, unchanged, into a directory of its own (so its relative paths,
../run and ./keys-pool, land there), runs it as its own compose project, captures on ``lo`` with
the host's network as the files say, sends UDP to a port of its own and waits for the alert in
Redis. It checks that every service runs (its container up, never restarted, its instance in
`pktscope status`), then stops the pipeline services before the Redis they write their last
counters to (the order docker compose stops dependents in; podman-compose stops every container
at once), and expects every container to exit 0 within the grace period, then `down` to leave no
container, network or volume. What a test needs beyond the file (``--learning 0`` so the first
connection alerts, a BPF filter for its port) goes in a pipeline.json or an override file made
from the file's own command. Images: tests/compose_helpers.py (no registry is needed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.cli.status import service_state
from tests.compose_helpers import (
    Compose,
    Container,
    Podman,
    cannot_run,
    containers_conf,
    ensure_base,
    ensure_pktscope,
    ensure_redis,
)
from tests.conftest import ROOT
from tests.pipeline_helpers import free_port, pktscope, wait_for

pytestmark = [pytest.mark.live, pytest.mark.skipif(bool(cannot_run()), reason=cannot_run() or "-")]

GRACE = 10  # podman stop's default: a service that has not exited by then is killed (exit 137)
ALERT_KINDS = ("new_process_egress", "new_process_dest")


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Podman:
    """podman with this session's containers.conf, and the three images built (or found cached)."""
    conf_dir = tmp_path_factory.mktemp("podman")
    p = Podman({**os.environ, "CONTAINERS_CONF": str(containers_conf(conf_dir))})
    timings = {**ensure_base(p, conf_dir), **ensure_redis(p), **ensure_pktscope(p)}
    print("compose images:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) or "cached", file=sys.stderr)
    return p


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short path (the run directory's unix sockets must stay under ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="compose-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def copy_compose(src: str, workdir: Path) -> Path:
    """compose/<src> at the same depth under workdir, so ../run and ../../run land in workdir/run."""
    dest = workdir / src
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / src, dest)
    (workdir / "run").mkdir(exist_ok=True)
    return dest


def write_pipeline(example: str, workdir: Path, port: int) -> None:
    """The compose file's own example config, capturing this test's traffic on lo, alerting at once."""
    cfg = json.loads((ROOT / example).read_text())
    cfg.update(interface="lo", bpf=f"udp port {port}", run_id=f"compose-{port}")
    cfg["detector"]["learning"] = 0.0
    (workdir / "run" / "pipeline.json").write_text(json.dumps(cfg, indent=2))


def host_cli(*argv: str) -> str:
    """`pktscope ...` on the host (the run directory and the Redis socket are shared with it)."""
    return pktscope(*argv, timeout=60).stdout


def send_udp(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"ping" * 8, ("127.0.0.1", port))


def alerts_for(port: int, list_alerts) -> list[dict]:
    """This test's alerts (its port in the destination), from `pktscope alerts list --json` output."""
    out = list_alerts()
    return [a for a in (json.loads(line) for line in out.splitlines() if line.startswith("{")) if str(port) in json.dumps(a)]


def first_alert(port: int, list_alerts, timeout: float = 60) -> tuple[list[dict], float]:
    """Send to ``port`` until its alert is in Redis; the alerts and the seconds it took."""
    t0 = time.monotonic()

    def sent_and_seen() -> list[dict]:
        send_udp(port)
        return alerts_for(port, list_alerts)

    return wait_for(sent_and_seen, timeout, interval=0.5, what=f"an alert for udp port {port}"), time.monotonic() - t0


def assert_all_running(compose: Compose, expected: set[str], done: set[str] = frozenset()) -> dict[str, Container]:
    """Every expected container is up and has not been restarted (no crash loop behind an "Up");
    the one-shot containers in ``done`` have exited."""
    got = compose.containers()
    assert set(got) == expected | done, (sorted(got), sorted(expected | done))
    bad = {
        n: (c.status, c.exit_code, c.restarts)
        for n, c in got.items()
        if (n not in done and not c.running) or (n in done and c.running) or c.restarts
    }
    assert not bad, f"{bad}\n{compose.logs()}"
    return got


def stop_in_order(compose: Compose, *groups: list[str]) -> float:
    """Stop the services group by group, all of a group at once (docker compose's order: the
    services before the Redis they depend on); the seconds the first group took."""
    took = 0.0
    for i, group in enumerate(groups):
        t0 = time.monotonic()
        compose("stop", "-t", str(GRACE), *group)
        if i == 0:
            took = time.monotonic() - t0
    return took


def exit_codes(compose: Compose) -> dict[str, int]:
    """Container -> exit code, once every container has stopped, none of them restarted on the way
    (a service that ended on capture's end of stream and came back would be running again)."""
    got = compose.containers()
    assert not [n for n, c in got.items() if c.running or c.restarts], got
    return {n: c.exit_code for n, c in got.items()}


# --- role all: compose/docker-compose.yml -------------------------------------------------------
ALL_SERVICES = ["detector", "detector-1", "observer", "flowtracker", "flowtracker-1", "decoder", "capture", "procwatch"]
ALL_CONTAINERS = {
    *(f"{{p}}_{s}_1" for s in ALL_SERVICES), "{p}_decoder_2", "{p}_redis_1",
}  # fmt: skip
ALL_INSTANCES = {"capture", "decoder-0", "decoder-1", "flowtracker-0", "flowtracker-1", "detector-0", "detector-1",
                 "observer", "procwatch"}  # fmt: skip


def test_role_all_under_compose_starts_alerts_and_stops(podman, workdir):
    port = free_port()
    project = f"ctest{port}"
    compose = Compose(podman, project, [copy_compose("compose/docker-compose.yml", workdir)])
    write_pipeline("compose/pipeline.example.json", workdir, port)
    run = workdir / "run"
    # the compose Redis's socket, seen from the host; --run-dir: the run's pipeline.json (its run id)
    # rather than whatever pipeline the default run directory holds
    where = ["--run-dir", str(run), "--redis-url", f"unix://{run / 'redis.sock'}"]
    try:
        t0 = time.monotonic()
        compose("up", "-d")
        up = time.monotonic() - t0
        found, waited = first_alert(port, lambda: host_cli("alerts", "list", "--json", *where))
        assert {a["kind"] for a in found} <= set(ALERT_KINDS), found
        assert_all_running(compose, {n.format(p=project) for n in ALL_CONTAINERS})
        status = json.loads(host_cli("status", "--json", *where))["services"]
        assert set(status) >= ALL_INSTANCES, sorted(status)
        states = {name: service_state(s, time.time()) for name, s in status.items()}
        assert set(states.values()) == {"up"}, states

        took = stop_in_order(compose, ALL_SERVICES, ["redis"])
        codes = exit_codes(compose)
        assert set(codes.values()) == {0}, f"{codes}\n{compose.logs()}"
        assert took < GRACE, f"stopping took {took:.1f} s: something waited for the kill"
        print(f"role all: up {up:.1f} s, first alert {waited:.1f} s later, stop {took:.1f} s", file=sys.stderr)
    finally:
        compose.down()


# --- roles sensor and pool: compose/multihost/docker-compose.yml -----------------------------------
def override_commands(compose_file: Path, extra: dict[str, list[str]]) -> Path:
    """An override file: the file's own command for each service, plus this test's flags."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    doc = {"services": {name: {"command": [*map(str, services[name]["command"]), *flags]} for name, flags in extra.items()}}
    path = compose_file.with_name("test-override.yml")
    path.write_text(yaml.safe_dump(doc))
    return path


def test_sensor_and_pool_roles_under_compose_over_curve(podman, workdir):
    port = free_port()
    compose_file = copy_compose("compose/multihost/docker-compose.yml", workdir)
    here = compose_file.parent
    keys = host_cli("keys", "--dir", str(here / "keys-pool"), "--client", "web-1")
    assert "web-1" in keys
    (here / "keys-sensor" / "clients").mkdir(parents=True)
    shutil.copy(here / "keys-pool" / "server.key", here / "keys-sensor" / "server.key")
    for suffix in (".key", ".key_secret"):
        shutil.copy(here / "keys-pool" / "clients" / f"web-1{suffix}", here / "keys-sensor" / "clients" / f"web-1{suffix}")
    override = override_commands(compose_file, {"pool": ["--learning", "0"], "sensor": ["--bpf", f"udp port {port}"]})
    # The sensor's ${POOL_HOST:?} and ${SENSOR_NAME:?} are interpolated for the pool's profile too,
    # so the pool's `up` needs them set (to anything) as well.
    env = {"SENSOR_NAME": "web-1", "POOL_HOST": "127.0.0.1", "SENSOR_IFACE": "lo"}
    pool = Compose(podman, f"cpool{port}", [compose_file, override], env, profile="pool")
    sensor = Compose(podman, f"csensor{port}", [compose_file, override], env, profile="sensor")
    try:
        pool("up", "-d")
        sensor("up", "-d")
        pool_container = f"cpool{port}_pool_1"

        def pool_cli(*argv: str) -> str:
            return pool.exec(pool_container, "pktscope", *argv, "--redis-url", "redis://redis:6379/0").stdout

        found, waited = first_alert(port, lambda: pool_cli("alerts", "list", "--json"))
        assert all(a["entity"].endswith("@web-1") and a["detail"].get("sensor") == "web-1" for a in found), found
        assert_all_running(pool, {f"cpool{port}_redis_1", pool_container})
        assert_all_running(sensor, {f"csensor{port}_sensor-redis_1", f"csensor{port}_sensor_1"})
        # every instance on both sides, listed by the pool (the sensor's stats come over the link)
        wanted = {"capture", "decoder-0", "decoder-1", "flowtracker-0", "flowtracker-1"}
        status = wait_for(
            lambda: (s := json.loads(pool_cli("status", "--json")))
            and wanted <= set(s.get("sensors", {}).get("web-1", {}))
            and s,
            20,
            what="the sensor's instances in the pool's status",
        )
        assert {"detector-0", "detector-1", "observer"} <= set(status["services"]), sorted(status["services"])

        took = stop_in_order(sensor, ["sensor"], ["sensor-redis"])
        took += stop_in_order(pool, ["pool"], ["redis"])
        codes = {**exit_codes(sensor), **exit_codes(pool)}
        assert set(codes.values()) == {0}, f"{codes}\n{sensor.logs()}\n{pool.logs()}"
        assert took < 2 * GRACE, f"stopping took {took:.1f} s"
        print(f"multihost: first alert {waited:.1f} s after up, stop {took:.1f} s", file=sys.stderr)
    finally:
        sensor.down()
        pool.down()


# --- role all on a Redis Cluster: compose/cluster/docker-compose.yml --------------------------------
CLUSTER_NODES = [f"redis-{i}" for i in range(1, 7)]
CLUSTER_NET = "10.231.77"  # the file's default ${PKTSCOPE_CLUSTER_NET}: the first three octets of a /24


def free_cluster_net(podman: Podman) -> str:
    """The file's default /24 for the cluster's compose network, or the next one that no podman
    network and no route of the host uses (podman refuses a subnet another network holds, e.g. the
    same file run by a concurrent session)."""
    names = podman.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    nets = json.loads(podman.run("network", "inspect", *names).stdout) if names else []
    taken = [ipaddress.ip_network(s["subnet"]) for n in nets for s in n.get("subnets") or []]
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines()
    taken += [ipaddress.ip_network(r.split()[0]) for r in routes if r[:1].isdigit()]
    a, b, c = map(int, CLUSTER_NET.split("."))
    for third in [*range(c, 256), *range(c)]:
        net = ipaddress.ip_network(f"{a}.{b}.{third}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return f"{a}.{b}.{third}"
    raise AssertionError(f"no free /24 in {a}.{b}.0.0/16 for the cluster's network")


@pytest.fixture(scope="module")
def cluster_run(podman) -> Iterator[dict]:
    """compose/cluster, run once for the tests below: what they check, gathered on the way."""
    workdir = Path(tempfile.mkdtemp(prefix="compose-", dir="/tmp"))
    port = free_port()
    project = f"ccluster{port}"
    # capture (host network) finds the nodes at their fixed addresses in this /24 (extra_hosts)
    net = {"PKTSCOPE_CLUSTER_NET": free_cluster_net(podman)}
    compose = Compose(podman, project, [copy_compose("compose/cluster/docker-compose.yml", workdir)], net)
    write_pipeline("compose/cluster/pipeline.cluster.json", workdir, port)
    result: dict = {"project": project}
    try:
        # podman 4.3 cannot start a container whose dependency has dependencies of its own
        # ("generating dependency graph ... not found in input list"): the one-shot
        # redis-cluster-create is brought up with its nodes first, and the services once it is done
        # (what `condition: service_completed_successfully` says), without podman's --requires.
        compose("up", "-d", "redis-cluster-create")
        created = podman.run("wait", f"{project}_redis-cluster-create_1", timeout=120)
        result["create_exit"] = int(created.stdout.strip())
        compose("up", "-d", "--no-deps", *ALL_SERVICES)
        exec_in = f"{project}_detector_1"

        def cli(*argv: str, check: bool = True) -> str:
            url = ["--redis-url", "redis://redis-1:6379/0", "--redis-cluster"]
            return compose.exec(exec_in, "pktscope", *argv, *url, check=check).stdout

        # while the new cluster settles, a read may meet CLUSTERDOWN: asked again until the alert shows
        result["alerts"], _ = first_alert(port, lambda: cli("alerts", "list", "--json", check=False))
        assert_all_running(
            compose,
            {*(f"{project}_{s}_1" for s in [*ALL_SERVICES, *CLUSTER_NODES]), f"{project}_decoder_2"},
            done={f"{project}_redis-cluster-create_1"},
        )
        # each service lists itself at its first stats write, which a Cluster still settling can
        # put off by a retry: status is read until every instance is there (or 20 s have passed)
        deadline = time.monotonic() + 20
        while True:
            result["status"] = json.loads(cli("status", "--json"))
            if set(result["status"]["services"]) >= ALL_INSTANCES or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        stop_in_order(compose, ALL_SERVICES, CLUSTER_NODES)
        result["exit_codes"] = exit_codes(compose)
        if set(result["exit_codes"].values()) != {0}:
            result["logs"] = compose.logs()  # for the assertion's message, before `down` removes them
        yield result
    finally:
        compose.down()
        shutil.rmtree(workdir, ignore_errors=True)


def test_cluster_example_under_compose_alerts_and_stops(cluster_run):
    project = cluster_run["project"]
    assert cluster_run["create_exit"] == 0, "redis-cli --cluster create failed"
    assert {a["kind"] for a in cluster_run["alerts"]} <= set(ALERT_KINDS)
    assert ALL_INSTANCES - {"capture"} <= set(cluster_run["status"]["services"]), sorted(cluster_run["status"]["services"])
    codes = {n: c for n, c in cluster_run["exit_codes"].items() if n != f"{project}_capture_1"}
    failed = {n: c for n, c in codes.items() if c != 0}
    assert not failed, f"{failed}\n{cluster_run.get('logs', '')}"


def test_cluster_example_capture_reaches_the_cluster_and_stops_cleanly(cluster_run):
    """capture, on the host's network, reaches the nodes by the names extra_hosts gives them."""
    assert "capture" in cluster_run["status"]["services"]
    assert cluster_run["exit_codes"][f"{cluster_run['project']}_capture_1"] == 0
