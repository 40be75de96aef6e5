"""Live capture on the loopback interface, under the real supervisor (tests run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from services.cli.supervisor import Supervisor
from tests.pipeline_helpers import (
    LivePipeline,
    Server,
    free_port,
    kill_service,
    service_pid,
    wait_for,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]

BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


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
        # the restarted decoder gets traffic again, and the pipeline still raises alerts
        wait_for(
            lambda: (
                int(pipe.stats("decoder-0").get("pid", 0)) != old
                and int(pipe.stats("decoder-0").get("packets_in", 0)) > 0
            ),
            10,
            what="traffic after restart",
        )
        # A restart is over within tens of milliseconds (capture reconnects after 10 ms), so it
        # may drop nothing. A decoder that stays away does: capture drops its batches and counts them.
        rpc = Supervisor(pipe.run_dir).rpc
        rpc.stopProcess("decoder:decoder-0")
        wait_for(lambda: int(pipe.stats("capture").get("dropped", 0)) > 0, 10, what="drops to be counted")
        rpc.startProcess("decoder:decoder-0")
        again = int(pipe.stats("decoder-0").get("packets_in", 0))
        wait_for(
            lambda: int(pipe.stats("decoder-0").get("packets_in", 0)) != again, 10, what="traffic after the start"
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
