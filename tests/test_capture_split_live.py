"""Live capture split over two processes (`--captures 2`, AF_PACKET fanout) on lo, as root.

Many TCP and UDP flows from their own source ports: each must appear once in the flow log with
both directions counted (whichever capture saw which packets), status lists both captures, and
the summary's packet count is the sum of theirs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from tests.pipeline_helpers import PKTSCOPE, ROOT, LivePipeline, Server, free_port, wait_for

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]

TCP_FLOWS = 60
UDP_FLOWS = 40


def _tcp_flows(server: Server) -> set[int]:
    """Connect, send, get an answer, close: TCP_FLOWS flows, each from its own source port."""
    ports = set()
    for _ in range(TCP_FLOWS):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            ports.add(c.getsockname()[1])
            c.sendall(b"ping" * 50)
            wait_for(lambda: len(server.conns) >= len(ports), 5, 0.005, what="the server to accept")
            conn = server.conns[-1]
            conn.recv(200)
            conn.sendall(b"pong" * 20)
            c.recv(80)
    return ports


def _udp_flows(port: int) -> set[int]:
    """UDP_FLOWS request/answer exchanges, each from its own source port."""
    ports = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", port))
        srv.settimeout(5)
        for _ in range(UDP_FLOWS):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                c.sendto(b"q" * 30, ("127.0.0.1", port))
                ports.add(c.getsockname()[1])
                data, addr = srv.recvfrom(100)
                srv.sendto(b"a" * 10, addr)
                c.recv(100)
    return ports


def test_two_captures_see_every_flow_once_with_both_directions(short_tmp):
    server = Server()
    udp_port = free_port()
    flow_log = short_tmp / "flows.jsonl"
    pipe = LivePipeline(
        short_tmp,
        f"tcp port {server.port} or udp port {udp_port}",
        decoders=2,
        extra=("--captures", "2", "--flow-log", str(flow_log), "--attribution", "psutil", "--json"),
    )
    try:
        status = subprocess.run(
            [*PKTSCOPE, "status", "--run-dir", str(pipe.run_dir)], cwd=ROOT, capture_output=True, text=True
        )
        names = {line.split()[0] for line in status.stdout.splitlines()[1:] if line.strip()}
        assert {"capture-0", "capture-1"} <= names, status.stdout
        assert "capture" not in names
        tcp_ports = _tcp_flows(server)
        udp_ports = _udp_flows(udp_port)
        expected_min = TCP_FLOWS * 8 + UDP_FLOWS * 2  # handshake, data both ways, FIN, ACKs

        def captured() -> int:
            return sum(int(pipe.stats(n).get("packets", 0) or 0) for n in ("capture-0", "capture-1"))

        server.close()  # the server's FINs: the last packets of the test
        wait_for(lambda: captured() >= expected_min, 20, what=f"{expected_min} packets captured")

        def settled() -> bool:  # no packet of ours arrived for a while (stats flush every ~0.25 s)
            before = captured()
            time.sleep(0.8)
            return captured() == before

        wait_for(settled, 20, what="the captures' counts to settle")
        parts = [int(pipe.stats(n).get("packets", 0) or 0) for n in ("capture-0", "capture-1")]
        assert all(parts), f"fanout gave one capture nothing: {parts}"
    finally:
        server.close()
        code = pipe.stop()
    log = pipe.log.read_text()
    assert code == 0, log[-3000:]
    summary = json.loads(log.strip().splitlines()[-1])
    flows = [json.loads(line) for line in flow_log.read_text().splitlines()]
    tcp = [f for f in flows if f["proto"] == 6 and {f["sport"], f["dport"]} & tcp_ports]
    udp = [f for f in flows if f["proto"] == 17 and {f["sport"], f["dport"]} & udp_ports]
    tcp_seen = [({f["sport"], f["dport"]} & tcp_ports).pop() for f in tcp]
    udp_seen = [({f["sport"], f["dport"]} & udp_ports).pop() for f in udp]
    assert sorted(tcp_seen) == sorted(tcp_ports), "every TCP flow exactly once"
    assert sorted(udp_seen) == sorted(udp_ports), "every UDP flow exactly once"
    for f in tcp:
        assert f["pkts_out"] > 0 and f["pkts_in"] > 0, f
        assert f["pkts_out"] + f["pkts_in"] >= 8, f  # no packet of the flow left out
    for f in udp:
        assert f["pkts_out"] + f["pkts_in"] == 2, f
    # the summary sums the captures' counts (nothing of ours arrived after they settled)
    assert summary["packets"] == sum(parts), (summary["packets"], parts)
    assert summary["packets"] == summary["decoded"] + summary["malformed"] + summary["non_ip"]
    assert not any(summary["lost"].values()), summary["lost"]
