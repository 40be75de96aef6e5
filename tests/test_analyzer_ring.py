"""`pktscope run --keep-packets N` + `pktscope alerts pcap ID -w FILE`, live on lo."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import pytest

from services.cli.read import read_capture
from services.decoder.ring import PacketRing, flow_key, text_flow_key
from tests.pipeline_helpers import Server, pktscope, start_pktscope, stop_pktscope, wait_for


def test_ring_is_bounded_per_flow_and_in_flows():
    ring = PacketRing(per_flow=3, max_flows=2)
    a = text_flow_key(6, "10.0.0.1", 1000, "10.0.0.2", 80)
    assert a == text_flow_key(6, "10.0.0.2", 80, "10.0.0.1", 1000)  # both directions
    assert a == flow_key(6, socket.inet_aton("10.0.0.1"), 1000, socket.inet_aton("10.0.0.2"), 80)
    for i in range(5):
        ring.add(a, (float(i), 1, 60, b"x"))
    assert [p[0] for p in ring.get(a)] == [2.0, 3.0, 4.0]
    ring.add(("b",), (9.0, 1, 60, b"y"))
    ring.add(("c",), (9.0, 1, 60, b"z"))  # a third flow: the least recently seen (a) goes
    assert ring.get(a) == [] and ring.forgotten == 1


@pytest.mark.live
@pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)")
def test_alert_pcap_saves_the_flow_packets(short_tmp):
    server = Server()
    run_dir = short_tmp / "run"
    proc = start_pktscope(
        "run",
        "--interface",
        "lo",
        "--bpf",
        f"tcp port {server.port}",
        "--decoders",
        "1",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(short_tmp / "state"),
        "--learning",
        "0",
        "--keep-packets",
        "16",
        log=short_tmp / "pktscope.log",
    )
    try:
        wait_for(lambda: (run_dir / "pipeline.json").exists(), 20, what="pipeline.json")

        def listed():
            out = pktscope("alerts", "list", "--json", "--run-dir", str(run_dir), check=False).stdout
            return [a for a in map(json.loads, out.splitlines()) if a.get("detail", {}).get("flow")]

        time.sleep(3)  # the services start and capture begins
        with socket.create_connection(("127.0.0.1", server.port)) as c:
            c.sendall(b"hello ring")
            time.sleep(0.2)
        alerts = wait_for(listed, 60, interval=0.5, what="an alert with a flow")
        alert = alerts[0]
        flow = alert["detail"]["flow"]
        out = short_tmp / "alert.pcapng"
        done = pktscope(
            "alerts",
            "pcap",
            alert["id"],
            "-w",
            str(out),
            "--wait",
            "20",
            "--run-dir",
            str(run_dir),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        text = io.StringIO()
        matched, error = read_capture(str(out), text, as_json=True)
        packets = [json.loads(line) for line in text.getvalue().splitlines()]
        assert error is None and matched == len(packets) >= 3
        ends = {
            frozenset([(p["ip"]["src"], p["tcp"]["srcport"]), (p["ip"]["dst"], p["tcp"]["dstport"])])
            for p in packets
        }
        assert ends == {frozenset([(flow["src"], flow["sport"]), (flow["dst"], flow["dport"])])}
        assert packets[0]["tcp"]["flags"]["syn"] == 1
        missing = pktscope(
            "alerts",
            "pcap",
            "0-1",
            "-w",
            str(short_tmp / "x.pcap"),
            "--wait",
            "0",
            "--run-dir",
            str(run_dir),
            check=False,
        )
        assert missing.returncode == 1 and "--keep-packets" in missing.stderr
    finally:
        stop_pktscope(proc)
        server.close()
