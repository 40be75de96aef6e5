"""Every tls.* / quic.* value the reference IDS reported for the corpus captures, our parsers find.

A small harness (dpkt) cuts each capture into TCP streams (client and server payload in sequence
order) and UDP flows (datagrams in order), runs tls.parse_client / parse_server on each stream
the way the dispatcher does (growing prefixes, segment by segment) and quic.QuicFlow on each UDP
flow, and checks that each expected value appears in some result.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import dpkt
import pytest
from conftest import CORPUS

from services.decoder.app import quic, tls

EXPECTED = CORPUS / "expected.jsonl"
PREFIXES = ("tls.", "quic.")


def _expected() -> dict[str, list[tuple[str, str]]]:
    by_pcap: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in EXPECTED.read_text().splitlines():
        row = json.loads(line)
        if row["field"].startswith(PREFIXES):
            by_pcap[row["pcap"]].append((row["field"], row["value"]))
    return dict(by_pcap)


def _ip_of(linktype: int, buf: bytes):
    """The IP packet of one captured frame (Ethernet, null/loopback, raw, Linux SLL)."""
    try:
        if linktype == dpkt.pcap.DLT_EN10MB:
            frame = dpkt.ethernet.Ethernet(buf)
            ip = frame.data
        elif linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
            ip = dpkt.loopback.Loopback(buf).data
        elif linktype in (101, dpkt.pcap.DLT_RAW, 14):
            ip = dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
        elif linktype == dpkt.pcap.DLT_LINUX_SLL:
            ip = dpkt.sll.SLL(buf).data
        else:
            return None
    except (dpkt.UnpackError, IndexError):
        return None
    return ip if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) else None


class TcpConn:
    """Both directions of one TCP connection as (offset, payload) segments."""

    def __init__(self, client: tuple) -> None:
        self.client = client
        self.base: dict[bool, int] = {}
        self.segments: dict[bool, list[tuple[int, bytes]]] = {True: [], False: []}

    def add(self, from_client: bool, seq: int, syn: bool, payload: bytes) -> None:
        if syn:
            self.base[from_client] = seq + 1
        if not payload:
            return
        base = self.base.setdefault(from_client, seq)
        self.segments[from_client].append(((seq - base) % (1 << 32), payload))

    def stream_pieces(self, from_client: bool) -> list[bytes]:
        """New in-order bytes, segment by segment (first copy of each byte wins; stops at a hole)."""
        pieces = []
        end = 0
        for offset, payload in sorted(self.segments[from_client], key=lambda s: s[0]):
            if offset > end or offset > 1 << 24:
                break
            if offset + len(payload) > end:
                pieces.append(payload[end - offset :])
                end = offset + len(payload)
        return pieces


def flows_of(path: Path) -> tuple[list[TcpConn], list[list[tuple[bytes, bool]]]]:
    """TCP connections and UDP flows (datagrams with their direction) of a capture."""
    tcp: dict[tuple, TcpConn] = {}
    conns: list[TcpConn] = []
    udp: dict[tuple, list] = {}
    with path.open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        for _ts, buf in reader:
            ip = _ip_of(linktype, buf)
            if ip is None:
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                key = (ip.src, ip.dst, l4.sport, l4.dport)
                rkey = (ip.dst, ip.src, l4.dport, l4.sport)
                syn_only = l4.flags & dpkt.tcp.TH_SYN and not l4.flags & dpkt.tcp.TH_ACK
                conn = tcp.get(key) or tcp.get(rkey)
                if conn is None or (syn_only and conn.client == key and conn.segments[True]):
                    conn = TcpConn(rkey if l4.flags & dpkt.tcp.TH_SYN and l4.flags & dpkt.tcp.TH_ACK else key)
                    tcp[key] = conn
                    tcp.pop(rkey, None)
                    conns.append(conn)
                from_client = conn.client == key
                conn.add(from_client, l4.seq, bool(l4.flags & dpkt.tcp.TH_SYN), bytes(l4.data))
            elif isinstance(l4, dpkt.udp.UDP):
                key = (ip.src, ip.dst, l4.sport, l4.dport)
                rkey = (ip.dst, ip.src, l4.dport, l4.sport)
                if rkey in udp:
                    udp[rkey].append((bytes(l4.data), False))
                else:
                    udp.setdefault(key, []).append((bytes(l4.data), True))
    return conns, list(udp.values())


def run_stream(parse, pieces: list[bytes]) -> tuple[dict, str]:
    """Feed growing prefixes as the dispatcher does; the first non-"more" answer."""
    buf = b""
    fields, status = {}, "more"
    for piece in pieces:
        buf += piece
        fields, status = parse(buf)
        if status != "more":
            break
    return fields, status


def decode_capture(path: Path) -> list[dict]:
    """Every field dict the TLS and QUIC parsers produce for one capture."""
    conns, udp_flows = flows_of(path)
    results = []
    for conn in conns:
        for from_client, parse in ((True, tls.parse_client), (False, tls.parse_server)):
            pieces = conn.stream_pieces(from_client)
            if pieces:
                fields, status = run_stream(parse, pieces)
                if status == "done":
                    results.append(fields)
    for datagrams in udp_flows:
        if not quic.looks_like_quic(datagrams[0][0]):
            continue
        flow = quic.QuicFlow()
        for payload, from_client in datagrams:
            fields = flow.feed(payload, from_client)
            if fields:
                results.append(fields)
    return results


def missing_values(pcap: str, wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    found = defaultdict(set)
    for fields in decode_capture(CORPUS / pcap):
        for key, value in fields.items():
            for item in value if isinstance(value, list) else (value,):
                found[key].add(str(item))
    return [(field, value) for field, value in wanted if value not in found[field]]


EXPECTED_BY_PCAP = _expected()


def test_corpus_has_tls_and_quic_expectations():
    fields = {field for rows in EXPECTED_BY_PCAP.values() for field, _ in rows}
    assert {"tls.sni", "tls.ja3", "tls.ja3s", "tls.ja4", "quic.ja4"} <= fields


@pytest.mark.parametrize("pcap", sorted(EXPECTED_BY_PCAP))
def test_expected_values(pcap):
    missing = missing_values(pcap, EXPECTED_BY_PCAP[pcap])
    assert not missing, f"{pcap}: not produced: {missing}"
