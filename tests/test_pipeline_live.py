"""Live capture on the loopback interface, under the real supervisor (tests run as root)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from shared.config import PipelineConfig
from shared.redis_conn import connect
from shared.redis_keys import Keys
from tests.pipeline_helpers import (
    free_port,
    kill_service,
    service_pid,
    start_pktscope,
    stop_pktscope,
    wait_for,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]

BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


class LivePipeline:
    """`pktscope run --interface lo` in the background, with a SUB socket on its alerts."""

    def __init__(self, tmp: Path, bpf: str, decoders: int = 1, interface: str = "lo") -> None:
        self.run_dir = tmp / "live"
        self.proc = start_pktscope(
            "run",
            "--interface",
            interface,
            "--bpf",
            bpf,
            "--decoders",
            str(decoders),
            "--run-dir",
            str(self.run_dir),
            "--state-dir",
            str(tmp / "state"),
            "--learning",
            "0",
            log=tmp / "pktscope.log",
        )
        self.log = tmp / "pktscope.log"
        wait_for(lambda: (self.run_dir / "pipeline.json").exists(), 20, what="pipeline.json")
        self.cfg = PipelineConfig.load(self.run_dir / "pipeline.json")
        self.keys = Keys(self.cfg.redis_prefix)
        self.r = wait_for(self._redis, 20, what="the private redis")
        services = {"capture", "flowtracker", "detector", *(f"decoder-{i}" for i in range(decoders))}
        wait_for(lambda: services <= self._reporting(), 30, what=f"services {services} to report")
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.cfg.alerts_pub_endpoint)
        time.sleep(0.3)  # let the subscription reach the PUB socket

    def _redis(self):
        try:
            r = connect(self.cfg.effective_redis_url)
            r.ping()
            return r
        except Exception:
            return None

    def _reporting(self) -> set[str]:
        names = self.r.smembers(self.keys.services())
        return {n for n in names if self.r.hget(self.keys.stats(n), "run_id") == self.cfg.run_id}

    def stats(self, service: str) -> dict:
        return self.r.hgetall(self.keys.stats(service))

    def next_alert(self, timeout: float) -> dict | None:
        if self.sub.poll(int(timeout * 1000)):
            kind, body = self.sub.recv_multipart()
            alert = msgpack.unpackb(body, raw=False)
            assert alert["kind"] == kind.decode()
            return alert
        return None

    def alerts_for(self, entity: str, timeout: float) -> list[dict]:
        found, deadline = [], time.time() + timeout
        while time.time() < deadline:
            alert = self.next_alert(deadline - time.time())
            if alert and alert["entity"] == entity:
                found.append(alert)
        return found

    def stream(self) -> list[dict]:
        return [json.loads(f["alert"]) for _id, f in self.r.xrange(self.keys.alerts())]

    def stop(self) -> int:
        self.sub.close(linger=0)
        return stop_pktscope(self.proc)


class Server:
    """A TCP server on lo that accepts and holds connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def connect_with(exe: str, port: int, hold: float = 3.0) -> subprocess.Popen:
    """A child process running ``exe`` (a bash) that opens a TCP connection and holds it."""
    # `read` is a builtin: bash itself holds the socket (a trailing `sleep` would be exec'd and own it)
    return subprocess.Popen([exe, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; read -t {hold} -u 3; true"])


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_child_connection_alert_arrives_on_pub_within_2_seconds(short_tmp, server):
    pipe = LivePipeline(short_tmp, f"tcp port {server.port}")
    try:
        started = time.time()
        child = connect_with(BASH, server.port)
        alerts = []
        while time.time() - started < 2.0 and not alerts:
            alert = pipe.next_alert(max(0.01, 2.0 - (time.time() - started)))
            if alert and alert["entity"] == BASH:
                alerts.append(alert)
        elapsed = time.time() - started
        child.wait()
        assert alerts, f"no alert for {BASH} within 2 s; log:\n{pipe.log.read_text()[-3000:]}"
        assert elapsed <= 2.0
        alert = alerts[0]
        assert alert["kind"] == "new_process_egress"
        assert alert["detail"].get("pid") == child.pid
        assert alert["id"] in {a_id for a_id, _ in pipe.r.xrange(pipe.keys.alerts())}
    finally:
        assert pipe.stop() == 0


def test_decoder_killed_is_restarted_and_the_loss_is_counted(short_tmp, server):
    udp_port = free_port()
    pipe = LivePipeline(short_tmp, f"tcp port {server.port} or udp port {udp_port}")
    stop_flood = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop_flood.is_set():
                for _ in range(50):
                    s.sendto(b"x" * 64, ("127.0.0.1", udp_port))
                time.sleep(0.005)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        wait_for(lambda: int(pipe.stats("decoder-0").get("packets_in", 0)) > 500, 10, what="decoder traffic")
        old = kill_service(pipe.run_dir, "decoder:decoder-0")
        wait_for(lambda: service_pid(pipe.run_dir, "decoder:decoder-0") not in (0, old), 10, what="restart")
        wait_for(lambda: int(pipe.stats("capture").get("dropped", 0)) > 0, 10, what="drops to be counted")
        # the restarted decoder gets traffic again, and the pipeline still raises alerts
        wait_for(
            lambda: (
                int(pipe.stats("decoder-0").get("pid", 0)) != old
                and int(pipe.stats("decoder-0").get("packets_in", 0)) > 0
            ),
            10,
            what="traffic after restart",
        )
        stop_flood.set()
        copy = short_tmp / "bash-after-restart"
        shutil.copy2(BASH, copy)
        child = connect_with(str(copy), server.port, hold=1)
        assert pipe.alerts_for(str(copy), 4), "no alert after the decoder restart"
        child.wait()
        capture = pipe.stats("capture")
        assert int(capture["dropped_decoder_0"]) == int(capture["dropped"]) > 0
    finally:
        stop_flood.set()
        assert pipe.stop() == 0


def test_detector_restart_does_not_raise_an_alert_twice(short_tmp, server):
    pipe = LivePipeline(short_tmp, f"tcp port {server.port}")
    try:
        connect_with(BASH, server.port, hold=0.5).wait()
        assert len(pipe.alerts_for(BASH, 3)) == 1
        old = kill_service(pipe.run_dir, "detector")
        wait_for(lambda: service_pid(pipe.run_dir, "detector") not in (0, old), 10, what="detector restart")
        wait_for(
            lambda: int(pipe.stats("detector").get("pid", 0)) not in (0, old), 10, what="detector report"
        )
        time.sleep(0.3)
        connect_with(BASH, server.port, hold=0.5).wait()
        copy = short_tmp / "another-bash"
        shutil.copy2(BASH, copy)
        child = connect_with(str(copy), server.port, hold=2)
        wait_for(
            lambda: any(a["entity"] == str(copy) for a in pipe.stream()),
            6,
            what="an alert from the restarted detector",
        )
        child.wait()
        egress = [a for a in pipe.stream() if a["kind"] == "new_process_egress" and a["entity"] == BASH]
        assert len(egress) == 1
    finally:
        assert pipe.stop() == 0


def test_capture_on_any_interface_sees_the_connection_once(short_tmp, server):
    """libpcap's `any` (Linux cooked headers, SLL2): the flow is found, attributed, counted once."""
    pipe = LivePipeline(short_tmp, f"tcp port {server.port}", decoders=2, interface="any")
    try:
        child = connect_with(BASH, server.port, hold=0.5)
        alerts = pipe.alerts_for(BASH, timeout=5)
        child.wait()
        assert [a["kind"] for a in alerts] == ["new_process_egress"]
        assert alerts[0]["detail"].get("pid") == child.pid
        assert pipe.stats("capture").get("linktype") in ("113", "276")  # SLL or SLL2
        wait_for(lambda: int(pipe.stats("flowtracker").get("flows_started", 0)) >= 1, 10, what="the flow")
        time.sleep(1.5)  # a duplicate would show by now
        assert int(pipe.stats("flowtracker")["flows_started"]) == 1  # one connection, one flow
    finally:
        assert pipe.stop() == 0
