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
from pathlib import Path

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
        accepted = len(server.conns)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            ports.add(c.getsockname()[1])
            c.sendall(b"ping" * 50)
            wait_for(lambda n=accepted: len(server.conns) > n, 5, 0.005, what="the server to accept")
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


def _split_pipeline(short_tmp) -> tuple[Server, int, Path, LivePipeline]:
    """A TCP server, a UDP port, and `pktscope run` on lo with two captures and a flow log."""
    server = Server()
    udp_port = free_port()
    flow_log = short_tmp / "flows.jsonl"
    pipe = LivePipeline(
        short_tmp,
        f"tcp port {server.port} or udp port {udp_port}",
        decoders=2,
        extra=("--captures", "2", "--flow-log", str(flow_log), "--attribution", "psutil", "--json"),
    )
    return server, udp_port, flow_log, pipe


def test_two_captures_see_every_flow_once_with_both_directions(short_tmp):
    server, udp_port, flow_log, pipe = _split_pipeline(short_tmp)
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


def test_a_killed_capture_is_restarted_and_no_flow_is_lost_around_it(short_tmp):
    """kill -9 one capture of two: supervisord starts it again (status counts the restart), the
    kernel hands its share of the fanout to the capture still alive meanwhile, and every flow
    made while it was down and after it came back is in the flow log with both directions."""
    server, udp_port, flow_log, pipe = _split_pipeline(short_tmp)
    try:
        old_pid = int(pipe.stats("capture-1")["pid"])
        os.kill(old_pid, 9)
        # gone, and its socket out of the fanout group: what it had queued and not read dies with it
        wait_for(lambda: not os.path.exists(f"/proc/{old_pid}"), 10, what="the killed capture to be gone")
        down_tcp = _tcp_flows(server)  # while capture-1 is dead or coming back
        wait_for(
            lambda: int(pipe.stats("capture-1").get("pid") or old_pid) != old_pid, 30, what="capture-1 restarted"
        )
        time.sleep(0.5)  # its AF_PACKET socket rejoins the fanout group as it opens the interface
        up_tcp = _tcp_flows(server)
        udp_ports = _udp_flows(udp_port)
        status = subprocess.run(
            [*PKTSCOPE, "status", "--run-dir", str(pipe.run_dir)], cwd=ROOT, capture_output=True, text=True
        )
        assert int(pipe.stats("capture-1").get("restarts") or 0) >= 1, pipe.stats("capture-1")
        # the new capture-1 rejoined the fanout group: it reads its share again
        wait_for(lambda: int(pipe.stats("capture-1").get("packets") or 0) > 0, 10, what="capture-1 to read")
        server.close()
        time.sleep(1.0)
    finally:
        server.close()
        code = pipe.stop()
    log = pipe.log.read_text()
    assert code == 0, log[-3000:]  # a restarted capture is not a failed run: the summary counts it
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["restarts"].get("capture-1", 0) >= 1, summary
    assert "capture-1" in status.stdout, status.stdout
    flows = [json.loads(line) for line in flow_log.read_text().splitlines()]
    for ports, proto, least in ((down_tcp, 6, 8), (up_tcp, 6, 8), (udp_ports, 17, 2)):
        mine = [f for f in flows if f["proto"] == proto and {f["sport"], f["dport"]} & ports]
        seen = sorted(({f["sport"], f["dport"]} & ports).pop() for f in mine)
        assert seen == sorted(ports), f"proto {proto}: every flow exactly once"
        for f in mine:
            assert f["pkts_out"] > 0 and f["pkts_in"] > 0 and f["pkts_out"] + f["pkts_in"] >= least, (proto, f)
