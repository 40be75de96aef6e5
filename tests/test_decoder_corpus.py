"""Every real capture of the corpus through the fast path and the dissector, checked against dpkt."""

from __future__ import annotations

import collections
import socket
from pathlib import Path
from struct import error as struct_error

import dpkt
import pcap
import pytest

from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from shared.records import FRAG_NONE
from tests.conftest import PCAPS

PCAP_FILES = sorted(p for p in PCAPS.rglob("*") if p.is_file())


def read_packets(path: Path) -> list[tuple]:
    cap = pcap.pcap(str(path))
    linktype = cap.datalink()
    return [(i + 1, ts, linktype, len(buf), bytes(buf)) for i, (ts, buf) in enumerate(cap)]


ALL_PACKETS = {p: read_packets(p) for p in PCAP_FILES}


def dpkt_five_tuple(linktype: int, data: bytes, depth: int = 0) -> tuple | None:
    """(src, dst, proto, sport, dport) as dpkt decodes it, or None when dpkt finds no TCP/UDP."""
    try:
        if linktype == 1:
            ip = dpkt.ethernet.Ethernet(data).data
        elif linktype == 113:
            ip = dpkt.sll.SLL(data).data
        elif linktype == 276:
            ip = dpkt.sll2.SLL2(data).data
        elif linktype in (0, 108):
            ip = dpkt.loopback.Loopback(data).data
        elif linktype == 104:
            proto = int.from_bytes(data[2:4], "big")
            ip = dpkt.ip.IP(data[4:]) if proto == 0x0800 else dpkt.ip6.IP6(data[4:])
        else:
            ip = dpkt.ip.IP(data) if data[0] >> 4 == 4 else dpkt.ip6.IP6(data)
    except (dpkt.UnpackError, IndexError, ValueError, struct_error):
        return None
    if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
        return None
    l4 = ip.data
    if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        return None
    if isinstance(l4, dpkt.udp.UDP) and l4.dport in (4789, 8472) and depth < 2:
        # dpkt has no VXLAN: decode the inner Ethernet frame ourselves, as the decoder does
        inner = bytes(l4.data)
        if len(inner) >= 22 and inner[0] & 0x08:
            found = dpkt_five_tuple(1, inner[8:], depth + 1)
            if found is not None:
                return found
    return ip.src, ip.dst, ip.p, l4.sport, l4.dport


def test_corpus_is_there():
    assert len(PCAP_FILES) >= 300
    assert sum(len(p) for p in ALL_PACKETS.values()) > 3000
    assert {pk[0][2] for pk in ALL_PACKETS.values() if pk} >= {0, 1, 12, 104, 113, 276}


@pytest.mark.parametrize("path", PCAP_FILES, ids=[str(p.relative_to(PCAPS)) for p in PCAP_FILES])
def test_fastpath_and_dissect_agree(path):
    packets = ALL_PACKETS[path]
    res = decode_batch(packets)
    assert res.decoded + res.malformed == len(packets)
    records = {r[0]: r for r in res.records}
    malformed = non_ip = 0
    for pkt in packets:
        fields, l4 = dissect(*pkt)
        assert fields["frame"]["number"] == pkt[0] and fields["frame"]["cap_len"] == len(pkt[4])
        rec = records.get(pkt[0])
        if "_malformed" in fields:
            malformed += 1
            assert rec is None
            continue
        ip = fields.get("ip") or fields.get("ipv6")
        if ip is None:
            non_ip += 1
            assert rec is None
            continue
        assert rec is not None, fields
        assert socket.inet_ntop(socket.AF_INET if len(rec[4]) == 4 else socket.AF_INET6, rec[4]) == ip["src"]
        assert rec[2] == fields["frame"]["len"]
        tcp, udp = fields.get("tcp"), fields.get("udp")
        if rec[3] == 6 and rec[6]:
            assert (rec[6], rec[7], rec[11]) == (tcp["srcport"], tcp["dstport"], tcp["seq"])
            assert rec[9] == tcp["len"]
        if rec[3] == 17 and rec[6]:
            assert (rec[6], rec[7]) == (udp["srcport"], udp["dstport"])
        if l4 is not None:
            assert l4[:7] == (rec[3], rec[4], rec[5], rec[6], rec[7], rec[8], rec[11])
            assert len(l4[7]) <= rec[9]
    assert (malformed, non_ip) == (res.malformed, res.non_ip)


def test_five_tuples_match_dpkt():
    compared = mismatched = 0
    for packets in ALL_PACKETS.values():
        records = {r[0]: r for r in decode_batch(packets).records}
        for num, _ts, linktype, _wl, data in packets:
            theirs = dpkt_five_tuple(linktype, data)
            rec = records.get(num)
            if theirs is None or rec is None or rec[10] != FRAG_NONE:
                continue
            compared += 1
            if (rec[4], rec[5], rec[3], rec[6], rec[7]) != theirs:
                mismatched += 1
    assert compared > 3000
    assert mismatched == 0


def test_decoded_by_dpkt_is_decoded_by_us():
    """Whatever dpkt reads as TCP/UDP we read too (we are stricter only on broken headers)."""
    missed = []
    for path, packets in ALL_PACKETS.items():
        records = {r[0] for r in decode_batch(packets).records}
        for num, _ts, linktype, _wl, data in packets:
            if dpkt_five_tuple(linktype, data) is not None and num not in records:
                fields, _ = dissect(num, 0.0, linktype, len(data), data)
                missed.append((path.name, num, fields.get("_malformed")))
    # the only ones are deliberately broken TCP headers dpkt does not check
    assert all(reason and reason.startswith("TCP header length") for _p, _n, reason in missed), missed


@pytest.mark.parametrize(
    "name,linktype,count",
    [("decode-sll2-02/input.pcap", 276, 159), ("decode-chdlc-01/hdlc-http_1tx.pcap", 104, 17)],
)
def test_sll2_and_cisco_hdlc_captures(name, linktype, count):
    packets = ALL_PACKETS[PCAPS / name]
    assert len(packets) == count and packets[0][2] == linktype
    res = decode_batch(packets)
    assert (res.decoded, res.malformed, len(res.records)) == (count, 0, count)
    assert all(r[3] == 6 and 80 in (r[6], r[7]) for r in res.records)
    fields, _ = dissect(*packets[0])
    assert ("sll" in fields) == (linktype == 276) and ("chdlc" in fields) == (linktype == 104)
    assert fields["tcp"]["flags"]["syn"] == 1


def test_pppoe_capture_decodes_to_http():
    packets = ALL_PACKETS[PCAPS / "bug-4810" / "pppoe-session-http.pcap"]
    res = decode_batch(packets)
    ports = collections.Counter(min(r[6], r[7]) for r in res.records)
    assert len(res.records) == len(packets) and ports == {80: len(packets)}
