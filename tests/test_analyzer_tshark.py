"""Issue 12 against tshark: written captures, follow-stream, initial RTT, on the corpus.

tshark runs once per file and question (several follow streams in one call); pktscope runs
in-process. Each test prints what it compared.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import PCAPS
from tshark_tools import fields, frames, needs_tshark, run_tool, run_tshark

from services.cli.follow import follow_streams
from services.cli.read import read_capture

pytestmark = needs_tshark
ALL_PCAPS = sorted(PCAPS.rglob("*.pcap")) + sorted(PCAPS.rglob("*.pcapng"))
WORKERS = 4  # tshark processes at once (each mostly waits on its own start-up)


def _pmap(fn, items):
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(fn, items))


def test_corpus_is_there():
    assert len(ALL_PCAPS) >= 30, f"corpus not found under {PCAPS}"


def _merged_frames(paths: list[Path], out: Path) -> list:
    """tshark's reading of ``paths`` one after the other (joined by Wireshark's own mergecap -a,
    so one tshark run reads them all: every file's interfaces and link types are kept)."""
    run_tool("mergecap", "-a", "-F", "pcapng", "-w", str(out), *map(str, paths))
    return frames(out)


def test_written_captures_read_back_identically_by_tshark(tmp_path):
    """Every corpus capture, written as pcap and as pcapng: tshark sees the same packets."""
    written: dict[str, list[Path]] = {"pcap": [], "pcapng": []}
    for i, path in enumerate(ALL_PCAPS):
        for ext, paths in written.items():
            out = tmp_path / f"{i}.{ext}"
            read_capture(str(path), io.StringIO(), write_path=str(out))
            paths.append(out)
    # each written file alone first: its own header must satisfy tshark
    for ext, paths in written.items():
        assert frames(paths[0]) == frames(ALL_PCAPS[0]), ext
    want = _merged_frames(ALL_PCAPS, tmp_path / "originals.pcapng")
    assert len(want) > 1000
    for ext, paths in written.items():
        got = _merged_frames(paths, tmp_path / f"written-{ext}.pcapng")
        assert len(got) == len(want), ext
        diffs = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        assert not diffs, f"{ext}: {len(diffs)} packets differ, first {got[diffs[0]]} vs {want[diffs[0]]}"
    print(f"{len(ALL_PCAPS)} captures, {len(want)} packets written as pcap and pcapng, read back identically")


FILTERED = [
    ("base64-issue-5223/input.pcap", "tcp.flags.syn == 1"),
    ("dns/bug-1158/input.pcap", "udp"),
    ("cond-log-dns-dig/input.pcap", "dns"),
    ("tls/tls13-draft18/tls13_draft18.pcap", "ip.dst == 10.9.0.2"),
    ("http-ipv6/input.pcap", "ipv6"),
    ("bug-2646-01/input.pcap", "frame.len > 100"),
    ("ja4-quic/input.pcap", "udp.port == 443"),
    ("community-id-ipv4/input.pcap", "tcp.srcport == 443"),
    ("bug-7657-01/input.pcap", "tcp.stream == 23"),
    ("http-async-srv/input.pcap", "tcp.len > 0 && tcp.srcport == 8080"),
]


@pytest.mark.parametrize(("name", "expr"), FILTERED)
def test_filtered_write_equals_tshark_w(tmp_path, name, expr):
    path = PCAPS / name
    ours = tmp_path / "ours.pcap"
    theirs = tmp_path / "theirs.pcap"
    matched, _ = read_capture(str(path), io.StringIO(), expr=expr, write_path=str(ours))
    run_tshark("-r", str(path), "-Y", expr, "-w", str(theirs), "-F", "pcap")
    want = frames(theirs)
    assert want, f"{expr} matches nothing in {name}: not a useful case"
    assert frames(ours) == want
    assert matched == len(want)


def _tshark_follow(path: Path, count: int) -> dict[int, list[tuple[bool, bytes]]]:
    """`tshark -z follow,tcp,raw,N` for streams 0..count-1 in one run: turns of (from server, bytes)."""
    args = ["-r", str(path), "-q"]
    for i in range(count):
        args += ["-z", f"follow,tcp,raw,{i}"]
    result: dict[int, list[tuple[bool, bytes]]] = {}
    current = None
    for line in run_tshark(*args).splitlines():
        if line.startswith("Filter: tcp.stream eq "):
            current = result.setdefault(int(line.split()[-1]), [])
        elif current is None or not line.strip() or line.startswith(("Node ", "Follow:", "=====")):
            continue
        else:
            server = line.startswith("\t")
            data = bytes.fromhex(line.strip())
            if current and current[-1][0] == server:
                current[-1] = (server, current[-1][1] + data)
            else:
                current.append((server, data))
    return result


def _most_tcp_streams(paths: list[Path], count: int) -> list[Path]:
    """The ``count`` captures with TCP payload that have the most TCP streams (ties: by name)."""
    scored = []
    for path in paths:
        followers = follow_streams(str(path), "tcp")
        if any(f.segments for f in followers.values()):
            scored.append((-len(followers), str(path), path))
    scored.sort()
    return [path for _n, _name, path in scored[:count]]


def test_follow_tcp_equals_tshark_on_30_captures():
    chosen = _most_tcp_streams(ALL_PCAPS, 30)
    assert len(chosen) == 30

    def compare(path: Path) -> tuple[int, list[str]]:
        ours = follow_streams(str(path), "tcp")
        rows = fields(str(path), ("tcp.stream",), "tcp")
        count = max(int(r[0]) for r in rows if r[0]) + 1
        theirs = _tshark_follow(path, count)
        bad = []
        for i in range(count):
            mine = ours[i].merged() if i in ours else []
            if mine != theirs.get(i, []):
                bad.append(f"{path} stream {i}")
        return count, bad

    results = _pmap(compare, chosen)
    streams = sum(n for n, _ in results)
    bad = [b for _, bs in results for b in bs]
    print(f"follow tcp: {streams} streams of 30 captures compared, {len(bad)} differ")
    assert not bad, bad
    assert streams >= 30


RTT_FIELDS = (
    "tcp.stream",
    "tcp.analysis.initial_rtt",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "frame.time_epoch",
    "frame.number",
)


def _rtt_mismatches(path: Path) -> tuple[int, list[str]]:
    streams: dict[str, dict] = {}
    per_packet: dict[int, float] = {}
    for stream, rtt, a4, a6, sport, b4, b6, dport, t, number in fields(str(path), RTT_FIELDS, "tcp"):
        if rtt:
            per_packet[int(number)] = round(float(rtt), 6)
        if not stream:
            continue
        ends = frozenset([(a4 or a6, int(sport)), (b4 or b6, int(dport))])
        entry = streams.setdefault(stream, {"ends": ends, "first": float(t), "rtt": None})
        if rtt and entry["rtt"] is None:
            entry["rtt"] = round(float(rtt), 6)
    out = io.StringIO()
    read_capture(str(path), out, as_json=True, flows=True)
    flows = [json.loads(line) for line in out.getvalue().splitlines()]
    flows = [f for f in flows if f["proto"] == 6]
    compared = 0
    bad = []
    claimed = set()
    for stream, entry in streams.items():
        # the flow holding the stream's first packet (a flow may hold several tshark streams
        # when a port is reused before the first connection ended)
        hits = [
            f
            for f in flows
            if frozenset([(f["src"], f["sport"]), (f["dst"], f["dport"])]) == entry["ends"]
            and round(f["first"], 6) <= round(entry["first"], 6) <= round(f["last"], 6)
        ]
        if entry["rtt"] is None:
            continue
        compared += 1
        mine = None if not hits or hits[0]["initial_rtt"] is None else round(hits[0]["initial_rtt"], 6)
        if hits:
            claimed.add(id(hits[0]))
        if mine != entry["rtt"]:
            bad.append(f"{path} stream {stream}: tshark {entry['rtt']}, pktscope {mine}")
    for f in flows:  # a flow with an RTT where tshark found none
        if f["initial_rtt"] is not None and id(f) not in claimed:
            bad.append(f"{path} flow {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']}: RTT tshark has not")
    # the packet field: wherever tshark shows tcp.analysis.initial_rtt, read's is the same (tshark
    # leaves it out of packets without other SEQ/ACK analysis; read shows it from the ACK on)
    packets = io.StringIO()
    read_capture(str(path), packets, as_json=True, expr="tcp.analysis.initial_rtt")
    ours = {}
    for line in packets.getvalue().splitlines():
        p = json.loads(line)
        ours[p["frame"]["number"]] = round(p["tcp"]["analysis"]["initial_rtt"], 6)
    for number, rtt in per_packet.items():
        if ours.get(number) != rtt:
            bad.append(f"{path} frame {number}: tcp.analysis.initial_rtt tshark {rtt}, pktscope {ours.get(number)}")
    return compared, bad


def test_initial_rtt_equals_tshark_on_every_stream_with_a_handshake():
    results = _pmap(_rtt_mismatches, ALL_PCAPS)
    compared = sum(n for n, _ in results)
    bad = [b for _, bs in results for b in bs]
    print(f"initial RTT: {compared} streams with a handshake compared, {len(bad)} differ")
    assert not bad, bad[:20]
    assert compared >= 100
