"""Prometheus metrics (--metrics-listen): a live run's /metrics, scraped and parsed with
prometheus_client's own parser; counters rise with traffic, a killed decoder shows in the
restarts and drops, alerts are counted by kind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from fault_helpers import kill_with_unread_frames
from pipeline_helpers import LivePipeline, Server, free_port, pktscope, service_pid, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in metrics.items() if n == name and set(labels.items()) <= set(lab))


def test_metrics_rise_with_traffic_and_show_a_killed_decoder(short_tmp) -> None:
    server = Server()
    udp_port, port = free_port(), free_port()
    pipe = LivePipeline(
        short_tmp,
        f"tcp port {server.port} or udp port {udp_port}",
        extra=("--metrics-listen", f"127.0.0.1:{port}"),
    )
    stop_flood = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop_flood.is_set():
                for _ in range(50):
                    s.sendto(b"x" * 64, ("127.0.0.1", udp_port))
                time.sleep(0.005)

    try:
        first = wait_for(lambda: _try_scrape(port), 20, what="/metrics to answer")
        for name in (
            "pktscope_packets_total",
            "pktscope_frames_lost_total",
            "pktscope_dropped_packets_total",
            "pktscope_service_restarts_total",
            "pktscope_redis_memory_used_bytes",
            "pktscope_learning",
            "pktscope_flows_active",
            "pktscope_alerts_total",
            "pktscope_attribution_info",
        ):
            assert any(n == name for n, _ in first), f"{name} missing"
        assert value(first, "pktscope_redis_memory_used_bytes") > 0
        assert value(first, "pktscope_learning") == 1  # nothing seen yet: the window has not started
        assert value(first, "pktscope_attribution_info", mode="psutil") == 1

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        subprocess.run(
            [BASH, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{server.port}; echo hi >&3; read -t 1 -u 3; true"],
            check=False,
        )
        wait_for(
            lambda: (
                value(scrape(port), "pktscope_packets_total", service="capture")
                > value(first, "pktscope_packets_total", service="capture") + 500
            ),
            15,
            what="capture's packet counter to rise",
        )
        wait_for(
            lambda: value(scrape(port), "pktscope_alerts_total", kind="new_process_egress") >= 1,
            15,
            what="the alert to be counted by kind",
        )
        rising = scrape(port)
        assert value(rising, "pktscope_learning") == 0  # --learning 0: detecting from the first event
        wait_for(  # each service writes its stats about once a second
            lambda: (
                (m := scrape(port))
                and value(m, "pktscope_packets_total", stage="decoder") > 0
                and value(m, "pktscope_flow_events_total", service="flowtracker") > 0
            ),
            10,
            what="the decoder's and flow-tracker's counters to rise",
        )

        # with frames it had not read: one killed while idle rightly loses nothing (docs/reliability.md)
        old = service_pid(pipe.run_dir, "decoder:decoder-0")
        kill_with_unread_frames(int(pipe.stats("decoder-0")["pid"]))  # the service, not its launcher client
        wait_for(lambda: service_pid(pipe.run_dir, "decoder:decoder-0") not in (0, old), 10, what="restart")
        after = wait_for(
            lambda: (
                (m := scrape(port))
                and value(m, "pktscope_service_restarts_total", service="decoder-0") >= 1
                and value(m, "pktscope_dropped_packets_total", reason="decoder_unavailable")
                + value(m, "pktscope_frames_lost_total")  # in flight to it (decoder) or from it
                > 0
                and m
            ),
            20,
            what="the decoder's restart and the loss in /metrics",
        )
        assert value(after, "pktscope_service_up", service="decoder-0") == 1
        status = pktscope("status", "--run-dir", str(pipe.run_dir)).stdout
        assert "decoder-0: restarted 1 time" in status
    finally:
        stop_flood.set()
        server.close()
        assert pipe.stop() == 0


def _try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None


def test_bad_listen_address_is_refused() -> None:
    proc = pktscope("run", "--read", "/dev/null", "--metrics-listen", "localhost", check=False)
    assert proc.returncode == 2 and "--metrics-listen" in proc.stderr and "127.0.0.1:9477" in proc.stderr
