"""`pktscope diff A B`: exact multiset counts on two captures with known overlaps."""

from __future__ import annotations

import json
import subprocess
import sys

import dpkt
from conftest import ROOT

from services.cli.diff import diff_captures


def _packet(src: str, dst: str, sport: int, payload: bytes, ttl: int = 64, mac: bytes = b"\x02" * 6) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=53, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(
        src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))), p=17, ttl=ttl, data=udp
    )
    ip.len = 20 + len(bytes(udp))
    # dpkt fills in the IP and UDP checksums: a new TTL gives new checksums, as a router would
    return bytes(dpkt.ethernet.Ethernet(src=mac, dst=b"\x04" * 6, type=0x0800, data=ip))


def _write(path, packets: list[bytes], t0: float) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for i, pkt in enumerate(packets):
            w.writepkt(pkt, ts=t0 + i)


P1 = _packet("10.0.0.1", "10.0.0.2", 1001, b"one")
P2 = _packet("10.0.0.1", "10.0.0.2", 1002, b"two")
P3 = _packet("10.0.0.1", "10.0.0.2", 1003, b"three")
P4 = _packet("10.0.0.1", "10.0.0.2", 1004, b"four")
P4_ROUTED = _packet("10.0.0.1", "10.0.0.2", 1004, b"four", ttl=61, mac=b"\x06" * 6)  # one hop on
P5 = _packet("10.0.0.1", "10.0.0.2", 1005, b"five")


def test_diff_counts_exactly(tmp_path):
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    _write(a, [P1, P2, P3, P3, P4], 1000.0)
    _write(b, [P2, P3, P5, P4_ROUTED, P2], 2000.0)  # other timestamps: never compared
    plain = diff_captures(str(a), str(b))
    assert (plain["common"], plain["only_a"], plain["only_b"]) == (2, 3, 3)
    assert plain["only_a_frames"] == [1, 4, 5] and plain["only_b_frames"] == [3, 4, 5]
    # the TTL alone is not enough (checksums and MACs changed with it)
    ttl_only = diff_captures(str(a), str(b), ttl=True)
    assert (ttl_only["common"], ttl_only["only_a"], ttl_only["only_b"]) == (2, 3, 3)
    transit = diff_captures(str(a), str(b), ttl=True, checksums=True, link_layer=True)
    assert (transit["common"], transit["only_a"], transit["only_b"]) == (3, 2, 2)
    assert transit["only_a_frames"] == [1, 4] and transit["only_b_frames"] == [3, 5]
    same = diff_captures(str(a), str(a))
    assert (same["common"], same["only_a"], same["only_b"]) == (5, 0, 0)


def test_diff_cli(tmp_path):
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    _write(a, [P1, P2, P3, P3, P4], 1000.0)
    _write(b, [P2, P3, P5, P4_ROUTED, P2], 2000.0)
    run = [sys.executable, "-m", "services.cli.main", "diff", str(a), str(b)]
    doc = json.loads(
        subprocess.run(
            [*run, "--json", "--ignore-transit"], cwd=ROOT, capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert (doc["common"], doc["only_a"], doc["only_b"]) == (3, 2, 2)
    text = subprocess.run([*run, "--frames"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (
        text.returncode == 0 and "common:      2" in text.stdout and "frames only in A: 1 4 5" in text.stdout
    )
    missing = subprocess.run(
        [*run[:-1], str(tmp_path / "nope.pcap")], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "not found" in missing.stderr
