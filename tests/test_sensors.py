"""Many hosts (issue 15): sensors in their own network namespaces send to a detector pool over CURVE.

Three sensors, each ``pktscope run --role sensor`` capturing live on the veth end inside its own
namespace, send to a pool of 2 detector shards (``pktscope run --role pool``) on the host,
every link CURVE-encrypted and authenticated. A TCP connection from inside each namespace must
raise alerts whose entity carries that sensor's name; a fourth sensor (replaying a corpus file
on the host) holds a key the pool does not know: it is refused, the pool logs and counts the
refusal, and the sensor counts the flow events it had to drop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import zmq.auth

from tests.conftest import PCAPS, ROOT
from tests.netns_helpers import free_octet

PKTSCOPE = [sys.executable, "-m", "services.cli.main"]
TINY_CAPTURE = PCAPS / "bug-2646-01" / "input.pcap"  # 29 packets, one outbound TLS flow
WAIT = 90.0  # seconds any one condition may take on a loaded 2-core machine

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ping") is None,
    reason="needs root, iproute2 and ping (network namespaces, live capture)",
)


class SensorNetns:
    """A namespace joined to the host by its own veth pair: 10.214.<octet>.2 inside, .1 on the host,
    with a default route through the host so it reaches the pool on another veth's address."""

    def __init__(self, index: int, tag: str, octet: int) -> None:
        self.name, self.host_if, self.ns_if = f"pksn{tag}{index}", f"pkh{tag}{index}", f"pkn{tag}{index}"
        self.host4, self.ns4 = f"10.214.{octet}.1", f"10.214.{octet}.2"
        self.created = False
        sh("ip", "netns", "add", self.name)
        self.created = True
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host4}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        sh(*self.cmd("ip", "addr", "add", f"{self.ns4}/30", "dev", self.ns_if))
        sh(*self.cmd("ip", "link", "set", self.ns_if, "up"))
        sh(*self.cmd("ip", "link", "set", "lo", "up"))
        sh(*self.cmd("ip", "route", "add", "default", "via", self.host4))

    def cmd(self, *argv: object) -> list[str]:
        return ["ip", "netns", "exec", self.name, *[str(a) for a in argv]]

    def wait_until_reachable(self, address: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(self.cmd("ping", "-c1", "-W1", address), capture_output=True).returncode == 0:
                return
        raise AssertionError(f"{self.name} cannot reach {address}")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class TcpServer:
    """Accepts connections on one address and reads them to the end (the traffic to watch)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.accepted += 1
                with contextlib.suppress(OSError):
                    conn.sendall(b"hello\n")
                    conn.recv(1024)

    def close(self) -> None:
        self.sock.close()


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def free_port_pair(address: str) -> int:
    """A port P with P and P+1 free on ``address`` (the pool binds one per shard)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s2, contextlib.suppress(OSError):
                s2.bind((address, port + 1))
                return port
    raise AssertionError("no free port pair")


def wait_for(what: str, check, timeout: float = WAIT, diagnostics=lambda: ""):
    """Poll ``check`` until it returns something true; fail with ``what`` and the diagnostics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{diagnostics()}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_three_sensors_in_namespaces_send_to_a_pool_of_two_over_curve_and_an_unknown_key_is_refused(
    short_tmp,
):
    tag = uuid.uuid4().hex[:4]
    keys = short_tmp / "keys"
    bad_keys = short_tmp / "badkeys"
    names = [f"sensor-{tag}-{i}" for i in range(1, 4)]
    for name in names:
        subprocess.run(
            [*PKTSCOPE, "keys", "--dir", keys, "--client", name], check=True, cwd=ROOT, capture_output=True
        )
    # the fourth sensor: a key pair of its own, with the pool's public key, never authorized
    subprocess.run(
        [*PKTSCOPE, "keys", "--dir", bad_keys, "--client", "intruder"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    shutil.copyfile(keys / "server.key", bad_keys / "server.key")
    intruder_key = zmq.auth.load_certificate(str(bad_keys / "clients" / "intruder.key"))[0].decode()

    nets: list[SensorNetns] = []
    procs: list[subprocess.Popen] = []
    servers: list[TcpServer] = []
    pool_dir = short_tmp / "pool"
    pool_r = None

    def diagnostics() -> str:
        logs = sorted(short_tmp.glob("*/logs/*.log"))
        out = [tail(p) for p in logs]
        for p in procs:
            out.append(f"--- {p.args[-1] if p.args else '?'} rc={p.poll()}")
        return "\n".join(out)

    try:
        for i in range(1, 4):
            # a /30 no stale namespace's veth holds (tests/netns_helpers.py), one per sensor
            nets.append(SensorNetns(i, tag, free_octet("10.214", i, {int(n.host4.split(".")[2]) for n in nets})))
        pool_addr = nets[0].host4  # the pool listens on one of the host's veth addresses
        for net in nets:
            net.wait_until_reachable(pool_addr)
        port = free_port_pair(pool_addr)
        pool = subprocess.Popen(
            [*PKTSCOPE, "run", "--role", "pool", "--listen", f"tcp://{pool_addr}:{port}", "--detectors", "2",
             "--curve-keys", keys, "--learning", "0", "--run-dir", pool_dir, "--state-dir", short_tmp / "pstate"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(pool)
        pool_r = wait_for(
            "the pool's Redis",
            lambda: _redis(pool_dir / "redis.sock"),
            diagnostics=diagnostics,
        )
        wait_for(
            "both detector shards ready",
            lambda: all(pool_r.hget(f"pktscope:stats:detector-{k}", "ready") == "1" for k in range(2)),
            diagnostics=diagnostics,
        )
        split = names[2]  # this sensor reads its interface with two captures (AF_PACKET fanout)
        for net, name in zip(nets, names, strict=True):
            server = TcpServer(net.host4)
            servers.append(server)
            procs.append(
                subprocess.Popen(
                    net.cmd(
                        *PKTSCOPE,
                        "run",
                        "--role",
                        "sensor",
                        "--interface",
                        net.ns_if,
                        "--bpf",
                        f"tcp port {server.port}",
                        "--pool",
                        f"tcp://{pool_addr}:{port}",
                        "--detectors",
                        "2",
                        "--sensor-name",
                        name,
                        "--curve-keys",
                        keys,
                        "--local-net",
                        f"{net.ns4}/32",
                        "--decoders",
                        "1",
                        *(("--captures", "2") if name == split else ()),
                        "--run-dir",
                        short_tmp / name[-1],
                        "--state-dir",
                        short_tmp / f"st{name[-1]}",
                    ),
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )  # fmt: skip
            )
        intruder = subprocess.Popen(
            [*PKTSCOPE, "run", "--role", "sensor", "--read", TINY_CAPTURE, "--pool", f"tcp://{pool_addr}:{port}",
             "--detectors", "2", "--sensor-name", "intruder", "--curve-keys", bad_keys, "--decoders", "1",
             "--run-dir", short_tmp / "x", "--state-dir", short_tmp / "stx"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(intruder)

        # each sensor is up when the pool has its capture's (live: linktype) and tracker's stats
        def sensors_up() -> bool:
            for name in names:
                caps = ("capture-0", "capture-1") if name == split else ("capture",)
                cap = [pool_r.hgetall(f"pktscope:sensor:{name}:stats:{c}") for c in caps]
                ft = pool_r.hgetall(f"pktscope:sensor:{name}:stats:flowtracker")
                if not all(c.get("linktype") for c in cap) or ft.get("ready") != "1":
                    return False
            return True

        wait_for("every sensor capturing and reporting to the pool", sensors_up, diagnostics=diagnostics)

        def entities() -> set[str]:
            return {json.loads(f["alert"])["entity"] for _, f in pool_r.xrange("pktscope:alerts")}

        wanted = {f"host:{net.ns4}@{name}" for net, name in zip(nets, names, strict=True)}

        def connect_and_look() -> bool:
            for net, server in zip(nets, servers, strict=True):
                subprocess.run(
                    net.cmd(sys.executable, "-c",
                            "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
                            "s.recv(16); s.sendall(b'bye'); s.close()",
                            net.host4, server.port),
                    capture_output=True, timeout=30,
                )  # fmt: skip
            return wanted <= entities()

        wait_for(
            f"alerts for {sorted(wanted)}",
            connect_and_look,
            diagnostics=lambda: f"entities so far: {sorted(entities())}\n{diagnostics()}",
        )
        alerts = [json.loads(f["alert"]) for _, f in pool_r.xrange("pktscope:alerts")]
        by_sensor: dict[str, list[dict]] = {}
        for alert in alerts:
            by_sensor.setdefault(alert["detail"].get("sensor", ""), []).append(alert)
        assert set(by_sensor) == set(names), f"alerts from unexpected sensors: {sorted(by_sensor)}"
        for net, name in zip(nets, names, strict=True):
            for alert in by_sensor[name]:
                # traffic stays on the addresses this test made: each sensor saw its own veth pair only
                flow = alert["detail"]["flow"]
                assert (flow["src"], flow["dst"]) == (net.ns4, net.host4), alert
                assert alert["entity"] == f"host:{net.ns4}@{name}"
                assert f"on {name}" in alert["title"]
        egress = [a for a in alerts if a["kind"] == "new_process_egress"]
        assert sorted(a["entity"] for a in egress) == sorted(wanted), (
            "one first-egress alert per sensor's host"
        )

        # the intruder: refused by the pool (logged with its key, counted), its events dropped and counted
        out, _ = intruder.communicate(timeout=WAIT)
        assert intruder.returncode == 3, out
        assert "flow events dropped for the pool" in out
        detector_logs = "".join(p.read_text() for p in (pool_dir / "logs").glob("detector-*.log"))
        assert f"refused a sensor: CURVE key {intruder_key}" in detector_logs
        refused = sum(int(pool_r.hget(f"pktscope:stats:detector-{k}", "auth_refused") or 0) for k in range(2))
        assert refused >= 1
        assert not pool_r.exists("pktscope:sensor:intruder:stats:capture"), "nothing of the intruder got in"

        # status on the pool lists every instance of every stage, on every sensor
        status = wait_for(
            "the pool's status listing every sensor",
            lambda: _status_with(
                pool_dir, [f"{n}/{s}" for n in names for s in ("capture", "decoder-0", "flowtracker")]
            ),
            diagnostics=diagnostics,
        )
        assert "detector-0" in status and "detector-1" in status
        assert "refused" in status
    finally:
        for proc in reversed(procs):
            stop(proc)
        for server in servers:
            server.close()
        for net in nets:
            net.close()
        if pool_r is not None:
            pool_r.close()
    for proc in procs[1:]:
        assert proc.returncode in (0, 3), f"{proc.args}: exit {proc.returncode}"
    assert pool.returncode == 0, pool.stdout.read() if pool.stdout else ""


def _redis(sock: Path) -> redis.Redis | None:
    if not sock.exists():
        return None
    r = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    try:
        r.ping()
    except redis.RedisError:
        return None
    return r


def _status_with(run_dir: Path, rows: list[str]) -> str | None:
    done = subprocess.run(
        [*PKTSCOPE, "status", "--run-dir", run_dir], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return done.stdout if all(row in done.stdout for row in rows) else None
