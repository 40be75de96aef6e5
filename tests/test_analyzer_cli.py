"""Analyzer pieces without tshark: the capture record reader/writer, follow output shapes, flow
retransmission counts, and the command-line errors."""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys

import dpkt
from conftest import PCAPS, ROOT

from services.cli.capfile import (
    OPT_IF_DESCRIPTION,
    OPT_IF_NAME,
    CapfileError,
    CaptureReader,
    CaptureWriter,
    Interface,
    Record,
)
from services.cli.follow import follow_streams, parse_follow
from services.flowtracker.table import FlowTable

HTTP_PCAP = PCAPS / "base64-issue-5223" / "input.pcap"
DNS_PCAP = PCAPS / "cond-log-dns-dig" / "input.pcap"


def pktscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pcapng_keeps_interfaces_units_and_lengths(tmp_path):
    eth = Interface(
        1, 65535, 1_000_000_000, 0, [(OPT_IF_NAME, b"eth0"), (OPT_IF_DESCRIPTION, b"uplink"), (9, b"\x09")]
    )
    raw = Interface(101, 1500, 1_000_000)
    records = [
        (Record(0, 1_700_000_000_123_456_789, 4, 60, b"abcd"), eth),
        (Record(1, 1_700_000_001_000_001, 3, 3, b"xyz"), raw),
        (Record(0, 1_700_000_002_000_000_001, 5, 1514, b"12345"), eth),
    ]
    out = tmp_path / "two.pcapng"
    with CaptureWriter(str(out), pcapng=True) as w:
        for rec, iface in records:
            w.write(rec, iface)
    reader = CaptureReader(str(out))
    back = list(reader)
    assert [r[1:] for r in back] == [rec[1:] for rec, _ in records]
    assert [i.linktype for i in reader.interfaces] == [1, 101]
    assert reader.interfaces[0].name == "eth0" and reader.interfaces[0].units == 1_000_000_000
    assert (OPT_IF_DESCRIPTION, b"uplink") in reader.interfaces[0].options
    # pcap cannot hold two link types: the error says what to do
    try:
        with CaptureWriter(str(tmp_path / "two.pcap"), pcapng=False) as w:
            for rec, iface in records:
                w.write(rec, iface)
    except CapfileError as exc:
        assert "pcapng" in str(exc)
    else:
        raise AssertionError("two link types in one pcap")
    # nanoseconds survive a pcap too
    with CaptureWriter(str(tmp_path / "ns.pcap"), pcapng=False) as w:
        w.write(records[0][0], eth)
    (rec,) = list(CaptureReader(str(tmp_path / "ns.pcap")))
    assert rec.ticks == 1_700_000_000_123_456_789 and rec.origlen == 60


def test_truncated_capture_gives_what_it_held(tmp_path):
    data = HTTP_PCAP.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-10])
    reader = CaptureReader(str(cut))
    assert len(list(reader)) == 4 and reader.error == "truncated packet data"
    proc = pktscope("read", str(cut), "-w", str(tmp_path / "o.pcap"))
    assert proc.returncode == 1 and "ends early" in proc.stderr
    assert len(list(CaptureReader(str(tmp_path / "o.pcap")))) == 4


def test_follow_json_and_udp():
    (tcp,) = follow_streams(str(HTTP_PCAP), "tcp").values()
    proc = pktscope("read", str(HTTP_PCAP), "--follow", "tcp,0", "--json")
    segments = [json.loads(line) for line in proc.stdout.splitlines()]
    assert segments and segments[0]["from"] == "client" and set(segments[0]) == {"from", "data"}
    assert b"".join(bytes.fromhex(s["data"]) for s in segments) == b"".join(d for _s, d in tcp.segments)
    assert bytes.fromhex(segments[0]["data"]).startswith(b"GET / HTTP/1.1")
    text = pktscope("read", str(HTTP_PCAP), "--follow", "http,0").stdout
    assert "Follow: http,ascii" in text and "GET / HTTP/1.1" in text
    udp = follow_streams(str(DNS_PCAP), "udp")
    assert udp and all(f.segments for f in udp.values())
    first = udp[0]
    assert not first.segments[0][0]  # the client (the query's sender) speaks first


def test_bad_follow_and_write_arguments():
    for spec in ("tcp", "ftp,1", "tcp,x", "tcp,-1"):
        try:
            parse_follow(spec)
        except ValueError as exc:
            assert "--follow" in str(exc)
        else:
            raise AssertionError(spec)
    assert pktscope("read", str(HTTP_PCAP), "--follow", "smtp,0").returncode == 2
    assert pktscope("read", str(HTTP_PCAP), "--pcapng").returncode == 2
    unwritable = pktscope("read", str(HTTP_PCAP), "-w", "/nonexistent-dir/x.pcap")
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr
    both = pktscope("read", str(HTTP_PCAP), "--flows", "--stats")
    assert both.returncode == 2 and "cannot be combined" in both.stderr


def _rec(ts, src, dst, sport, dport, flags, seq, pl):
    return (
        0,
        ts,
        60 + pl,
        6,
        socket.inet_aton(src),
        socket.inet_aton(dst),
        sport,
        dport,
        flags,
        pl,
        0,
        seq,
        None,
    )


def test_flow_rtt_retransmissions_and_out_of_order():
    c, s = ("10.0.0.1", "10.0.0.2", 5555, 80), ("10.0.0.2", "10.0.0.1", 80, 5555)
    recs = [
        _rec(1.0, *c, 0x02, 999, 0),
        _rec(1.010, *s, 0x12, 4999, 0),
        _rec(1.0125, *c, 0x10, 1000, 0),  # the first ACK without SYN: RTT 12.5 ms
        _rec(1.02, *c, 0x18, 1000, 100),
        _rec(1.03, *c, 0x18, 1100, 100),
        _rec(1.04, *c, 0x18, 1100, 100),  # retransmitted
        _rec(1.05, *c, 0x18, 1300, 100),  # a gap at 1200
        _rec(1.06, *c, 0x18, 1200, 100),  # fills it: out of order
        _rec(1.07, *s, 0x18, 5000, 10),
        _rec(1.08, *s, 0x18, 5000, 10),  # retransmitted
    ]
    table = FlowTable()
    table.add(recs)
    table.finish("eos", 2.0)
    (end,) = [e for e in table.take() if e["ev"] == "end"]
    assert round(end["initial_rtt"], 6) == 0.0125
    assert (end["retransmissions"], end["out_of_order"]) == (2, 1)


def test_interfaces_and_capture_help_name_their_flags():
    assert "--bpf" in pktscope("capture", "--help").stdout
    assert pktscope("capture").returncode == 2  # -i is required


def test_dpkt_reads_what_capture_writer_wrote(tmp_path):
    out = tmp_path / "o.pcap"
    with CaptureWriter(str(out), pcapng=False) as w:
        w.write(Record(0, 1_500_000_000_250_000, 3, 3, b"abc"), Interface(1))
    with open(out, "rb") as f:
        ((ts, buf),) = list(dpkt.pcap.Reader(f))
    assert buf == b"abc" and abs(ts - 1_500_000_000.25) < 1e-6
    assert io.BytesIO(out.read_bytes()).read(4) == struct.pack("<I", 0xA1B2C3D4)
