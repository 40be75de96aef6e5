"""Unit tests of the L2-L4 decoders with packets built byte by byte."""

from __future__ import annotations

import socket
import struct

import pytest

from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from shared.records import FRAG_FIRST, FRAG_LATER, FRAG_NONE, R_APP, R_DST, R_FRAG, R_PAYLEN, R_PROTO, R_SRC

SRC4, DST4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("192.0.2.7")
SRC6, DST6 = (
    socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
    socket.inet_pton(socket.AF_INET6, "2001:db8:0:1::2"),
)
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("02000000000b")


# --- builders ----------------------------------------------------------------------------------
def tcp(sport=40000, dport=443, seq=1000, flags=0x18, payload=b"", hlen=20) -> bytes:
    opts = b"\x01" * (hlen - 20) if hlen >= 20 else b""
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, 7, (hlen // 4) << 4, flags, 65535, 0, 0) + opts + payload
    )


def udp(sport=5353, dport=53, payload=b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto, l4, src=SRC4, dst=DST4, fragw=0, total=None, vhl=0x45, options=b"") -> bytes:
    size = 20 + len(options) + len(l4) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", vhl, 0, size, 77, fragw, 64, proto, 0, src, dst) + options + l4


def ipv6(nxt, payload, src=SRC6, dst=DST6, plen=None) -> bytes:
    size = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", (6 << 28) | 0x12345, size, nxt, 64, src, dst) + payload


def ext(nxt, body_len=6) -> bytes:
    """A hop-by-hop/routing/destination options header of 8 bytes (body padded)."""
    return struct.pack("!BB", nxt, 0) + b"\x00" * body_len


def frag6(nxt, offset, more, ident=9) -> bytes:
    return struct.pack("!BxHI", nxt, (offset // 8) << 3 | more, ident)


def eth(etype, payload, tags=()) -> bytes:
    out = MAC_B + MAC_A
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", etype) + payload


def one(linktype: int, data: bytes, wirelen: int | None = None):
    """Decode a single packet both ways; return (record or None, batch result, fields, l4)."""
    res = decode_batch([(1, 1.5, linktype, len(data) if wirelen is None else wirelen, data)])
    assert res.decoded + res.malformed == 1
    fields, l4 = dissect(1, 1.5, linktype, len(data) if wirelen is None else wirelen, data)
    assert ("_malformed" in fields) == (res.malformed == 1)
    return (res.records[0] if res.records else None), res, fields, l4


# --- link layers -------------------------------------------------------------------------------
def test_ethernet_ipv4_tcp_record_and_fields():
    pkt = eth(0x0800, ipv4(6, tcp(payload=b"hello", flags=0x18)))
    rec, res, f, l4 = one(1, pkt)
    assert rec == (1, 1.5, len(pkt), 6, SRC4, DST4, 40000, 443, 0x18, 5, FRAG_NONE, 1000, None)
    assert f["frame"]["protocols"] == "eth:ethertype:ip:tcp"
    assert f["eth"] == {"dst": "02:00:00:00:00:0b", "src": "02:00:00:00:00:01", "type": 0x0800}
    assert f["ip"]["src"] == "10.0.0.1" and f["ip"]["dst"] == "192.0.2.7" and f["ip"]["ttl"] == 64
    assert f["tcp"]["flags"]["psh"] == 1 and f["tcp"]["flags"]["ack"] == 1 and f["tcp"]["flags"]["syn"] == 0
    assert f["tcp"]["len"] == 5 and f["tcp"]["hdr_len"] == 20
    assert l4 == (6, SRC4, DST4, 40000, 443, 0x18, 1000, b"hello")


def test_ethernet_ipv4_udp():
    rec, _, f, l4 = one(1, eth(0x0800, ipv4(17, udp(payload=b"q" * 12))))
    assert rec[R_PROTO] == 17 and rec[6:10] == (5353, 53, 0, 12)
    assert f["udp"] == {"srcport": 5353, "dstport": 53, "length": 20, "checksum": 0}
    assert l4 == (17, SRC4, DST4, 5353, 53, 0, 0, b"q" * 12)


@pytest.mark.parametrize(
    "tags",
    [((0x8100, 100),), ((0x88A8, 200), (0x8100, 100)), ((0x9100, 300), (0x9100, 301), (0x8100, 5))],
    ids=["dot1q", "qinq", "stacked-9100"],
)
def test_vlan_tags(tags):
    rec, _, f, _ = one(1, eth(0x0800, ipv4(17, udp()), tags=tags))
    assert rec[6:8] == (5353, 53)
    assert f["vlan"]["id"] == tags[0][1]
    inner = f["vlan"]
    for _tpid, vid in tags[1:]:
        inner = inner["inner"]
        assert inner["id"] == vid
    assert f["frame"]["protocols"].count("vlan") == len(tags)


def test_too_many_vlan_tags_is_malformed():
    _, res, f, _ = one(1, eth(0x0800, ipv4(17, udp()), tags=[(0x8100, i) for i in range(9)]))
    assert res.malformed == 1 and "VLAN" in f["_malformed"]


def test_linux_sll():
    hdr = struct.pack("!HHH8sH", 4, 1, 6, MAC_A + b"\0\0", 0x0800)
    rec, _, f, _ = one(113, hdr + ipv4(6, tcp(flags=0x02)))
    assert rec[R_PROTO] == 6 and rec[8] == 0x02
    assert f["sll"]["pkttype"] == 4 and f["sll"]["src"]["eth"] == "02:00:00:00:00:01"
    assert f["frame"]["protocols"] == "sll:ethertype:ip:tcp"


def test_linux_sll2_ipv6():
    hdr = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, MAC_A + b"\0\0")
    rec, _, f, _ = one(276, hdr + ipv6(6, tcp(payload=b"x")))
    assert rec[R_SRC] == SRC6 and rec[R_DST] == DST6 and rec[R_PAYLEN] == 1
    assert (
        f["sll"]["ifindex"] == 3
        and f["ipv6"]["src"] == "2001:db8::1"
        and f["ipv6"]["dst"] == "2001:db8:0:1::2"
    )
    assert f["ipv6"]["flow"] == 0x12345


@pytest.mark.parametrize(
    "linktype,header,packet",
    [
        (0, struct.pack("<I", 2), ipv4(17, udp())),  # little-endian host
        (0, struct.pack(">I", 2), ipv4(17, udp())),  # big-endian host
        (0, struct.pack("<I", 30), ipv6(17, udp())),  # Darwin AF_INET6
        (0, struct.pack("<I", 28), ipv6(17, udp())),  # FreeBSD AF_INET6
        (108, struct.pack(">I", 24), ipv6(17, udp())),  # OpenBSD loop, network order
        (108, struct.pack(">I", 2), ipv4(17, udp())),
        (101, b"", ipv4(17, udp())),
        (101, b"", ipv6(17, udp())),
        (12, b"", ipv4(17, udp())),
        (14, b"", ipv6(17, udp())),
        (228, b"", ipv4(17, udp())),
        (229, b"", ipv6(17, udp())),
        (104, struct.pack("!BBH", 0x0F, 0, 0x0800), ipv4(17, udp())),
        (104, struct.pack("!BBH", 0x8F, 0, 0x86DD), ipv6(17, udp())),
    ],
)
def test_other_link_types(linktype, header, packet):
    rec, res, f, _ = one(linktype, header + packet)
    assert res.decoded == 1 and rec is not None
    assert rec[6:8] == (5353, 53) and rec[R_PROTO] == 17
    assert ("ip" in f) == (packet[0] >> 4 == 4) and ("ipv6" in f) == (packet[0] >> 4 == 6)


def test_null_non_ip_family_and_raw_version_mismatch():
    rec, res, _, _ = one(0, struct.pack("<I", 7) + b"\0" * 30)
    assert rec is None and res.non_ip == 1
    _, res, f, _ = one(228, ipv6(17, udp()))
    assert res.malformed == 1 and "version" in f["_malformed"]


def test_unsupported_linktype_is_malformed():
    _, res, f, _ = one(147, b"\0" * 40)
    assert res.malformed == 1 and "147" in f["_malformed"]


def test_pppoe_session_ipv4():
    pppoe = struct.pack("!BBHHH", 0x11, 0, 0x1234, 2 + 28, 0x0021)
    rec, _, f, _ = one(1, eth(0x8864, pppoe + ipv4(17, udp())))
    assert rec[6:8] == (5353, 53)
    assert f["pppoes"]["session_id"] == 0x1234 and f["ppp"]["protocol"] == 0x21


def test_pppoe_compressed_protocol_field():
    pppoe = struct.pack("!BBHHB", 0x11, 0, 7, 1 + 48, 0x21)  # one-byte PPP protocol
    rec, _, f, _ = one(1, eth(0x8864, pppoe + ipv4(6, tcp())))
    assert rec[6:8] == (40000, 443) and f["ppp"]["protocol"] == 0x21


def test_mpls_ipv4():
    labels = struct.pack("!I", (16 << 12) | 64) + struct.pack("!I", (17 << 12) | 0x100 | 64)
    rec, _, f, _ = one(1, eth(0x8847, labels + ipv4(6, tcp())))
    assert rec[R_PROTO] == 6 and f["mpls"]["labels"] == [16, 17]


# --- ARP and other non-IP --------------------------------------------------------------------
def arp_packet(opcode=1) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, opcode) + MAC_A + SRC4 + b"\0" * 6 + DST4


def test_arp_is_non_ip_without_record():
    rec, res, f, l4 = one(1, eth(0x0806, arp_packet(2)))
    assert rec is None and l4 is None and res.non_ip == 1 and res.decoded == 1
    assert f["arp"]["opcode"] == 2
    assert f["arp"]["src"] == {"hw_mac": "02:00:00:00:00:01", "proto_ipv4": "10.0.0.1"}
    assert f["arp"]["dst"]["proto_ipv4"] == "192.0.2.7"
    assert f["frame"]["protocols"] == "eth:ethertype:arp"


def test_truncated_arp_is_malformed():
    _, res, f, _ = one(1, eth(0x0806, arp_packet()[:20]))
    assert res.malformed == 1 and res.non_ip == 0 and f["_malformed"]


@pytest.mark.parametrize("etype", [0x88CC, 0x0026], ids=["lldp", "802.3-length"])
def test_other_ethertypes_are_non_ip(etype):
    rec, res, _, _ = one(1, eth(etype, b"\x42" * 46))
    assert rec is None and res.non_ip == 1 and res.malformed == 0


# --- IPv4 lengths and fragments ------------------------------------------------------------------
def test_ipv4_options_are_skipped():
    rec, _, f, _ = one(1, eth(0x0800, ipv4(6, tcp(payload=b"ab"), vhl=0x47, options=b"\x01" * 8)))
    assert rec[6:8] == (40000, 443) and rec[R_PAYLEN] == 2 and f["ip"]["hdr_len"] == 28


def test_snaplen_truncated_packet_uses_ip_length_and_raises_wirelen():
    full = eth(0x0800, ipv4(6, tcp(payload=b"z" * 1400)))
    captured = full[:96]
    rec, _, f, l4 = one(1, captured, wirelen=len(full))  # the record header's original length
    assert rec[R_PAYLEN] == 1400 and rec[2] == len(full) == 14 + 20 + 20 + 1400
    assert f["frame"]["len"] == len(full) and f["frame"]["cap_len"] == 96
    assert l4[-1] == full[54:96]  # only the captured part of the payload
    # frame.len is the record's, never the IP header's guess (a lying total length stays a lie)
    rec, _, f, _ = one(1, captured)
    assert f["frame"]["len"] == 96 and rec[2] == len(full)  # the pipeline's byte count still estimates


def test_ethernet_padding_is_not_payload():
    pkt = eth(0x0800, ipv4(6, tcp(flags=0x10))) + b"\0" * 6  # 60-byte minimum frame
    rec, _, _, l4 = one(1, pkt)
    assert rec[R_PAYLEN] == 0 and rec[2] == 60 and l4 is None  # pure ACK: nothing to inspect


def test_zero_total_length_from_segmentation_offload():
    rec, _, _, _ = one(1, eth(0x0800, ipv4(6, tcp(payload=b"x" * 100), total=0)))
    assert rec[R_PAYLEN] == 100


def test_ipv4_fragments():
    first = eth(0x0800, ipv4(17, udp(payload=b"a" * 32), fragw=0x2000, total=20 + 40))
    later = eth(0x0800, ipv4(17, b"b" * 24, fragw=5))
    rec1, _, f1, l41 = one(1, first)
    rec2, _, f2, l42 = one(1, later)
    assert rec1[R_FRAG] == FRAG_FIRST and rec1[6:8] == (5353, 53) and rec1[R_PAYLEN] == 32
    assert rec2[R_FRAG] == FRAG_LATER and rec2[6:8] == (0, 0) and rec2[R_PAYLEN] == 24
    assert f1["ip"]["flags"]["mf"] == 1 and f2["ip"]["frag_offset"] == 40
    assert l41 is None and l42 is None  # fragments are never handed to the application layers


def test_tiny_first_fragment_has_no_ports_but_is_not_malformed():
    rec, res, _, _ = one(1, eth(0x0800, ipv4(6, tcp()[:8], fragw=0x2000)))
    assert res.malformed == 0 and rec[R_FRAG] == FRAG_FIRST and rec[6:8] == (0, 0)


# --- IPv6 extension headers ----------------------------------------------------------------------
def test_ipv6_extension_headers_walked_to_tcp():
    payload = ext(43) + ext(60) + ext(6) + tcp(payload=b"hi")  # hop-by-hop, routing, dstopts, tcp
    rec, _, f, l4 = one(1, eth(0x86DD, ipv6(0, payload)))
    assert rec[R_PROTO] == 6 and rec[6:8] == (40000, 443) and rec[R_PAYLEN] == 2
    assert f["frame"]["protocols"] == "eth:ethertype:ipv6:ipv6.hopopts:ipv6.routing:ipv6.dstopts:tcp"
    assert l4[-1] == b"hi"


def test_ipv6_ah_length_in_32_bit_words():
    ah = struct.pack("!BBHII", 17, 4, 0, 0x100, 1) + b"\0" * 12  # (4 + 2) * 4 = 24 bytes
    rec, _, f, _ = one(1, eth(0x86DD, ipv6(51, ah + udp(payload=b"d"))))
    assert (
        rec[R_PROTO] == 17 and rec[6:8] == (5353, 53) and rec[R_PAYLEN] == 1 and f["ipv6"]["ah"]["len"] == 24
    )


def test_ipv6_fragments():
    first = eth(0x86DD, ipv6(44, frag6(17, 0, 1) + udp(payload=b"a" * 16)))
    later = eth(0x86DD, ipv6(0, ext(44) + frag6(17, 24, 0) + b"b" * 16))
    atomic = eth(0x86DD, ipv6(44, frag6(58, 0, 0) + struct.pack("!BBHHH", 128, 0, 0, 1, 2)))
    rec1, _, _, _ = one(1, first)
    rec2, _, f2, _ = one(1, later)
    rec3, _, f3, _ = one(1, atomic)
    assert rec1[R_FRAG] == FRAG_FIRST and rec1[6:8] == (5353, 53)
    assert rec2[R_FRAG] == FRAG_LATER and rec2[R_PROTO] == 17 and rec2[6:8] == (0, 0) and rec2[R_PAYLEN] == 16
    assert f2["ipv6"]["fraghdr"]["offset"] == 24
    assert rec3[R_FRAG] == FRAG_NONE and rec3[R_PROTO] == 58 and f3["icmpv6"]["type"] == 128
    assert f3["icmpv6"]["ident"] == 1 and f3["icmpv6"]["seq"] == 2


def test_ipv6_extension_header_past_payload_length_is_malformed():
    hopopts = struct.pack("!BB", 6, 3) + b"\x00" * 30  # (3 + 1) * 8 = 32 bytes
    _, res, f, _ = one(1, eth(0x86DD, ipv6(0, hopopts, plen=8)))
    assert res.malformed == 1 and "hopopts" in f["_malformed"]


# --- ICMP ----------------------------------------------------------------------------------------
def test_icmp_has_no_ports():
    rec, _, f, _ = one(1, eth(0x0800, ipv4(1, struct.pack("!BBHHH", 8, 0, 0, 7, 9) + b"ping")))
    assert rec[R_PROTO] == 1 and rec[6:9] == (0, 0, 0) and rec[R_PAYLEN] == 12
    assert f["icmp"] == {"type": 8, "code": 0, "checksum": 0, "ident": 7, "seq": 9}


# --- malformed packets ---------------------------------------------------------------------------
GOOD = eth(0x0800, ipv4(6, tcp()))


@pytest.mark.parametrize(
    "linktype,data",
    [
        (1, b""),
        (1, GOOD[:10]),
        (1, GOOD[:30]),  # IPv4 header cut
        (1, GOOD[:40]),  # TCP header cut
        (1, eth(0x0800, ipv4(6, tcp(), vhl=0x55))),  # version 5
        (1, eth(0x0800, ipv4(6, tcp(), vhl=0x44))),  # IHL 16 bytes
        (1, eth(0x0800, ipv4(6, tcp(), total=12))),  # total < header
        (1, eth(0x0800, ipv4(6, tcp(hlen=16)))),  # TCP data offset < 20
        (1, eth(0x0800, ipv4(6, tcp(hlen=40)[:20]))),  # TCP header longer than the IP payload
        (1, eth(0x0800, ipv4(17, udp()[:6]))),  # UDP shorter than its header
        (1, eth(0x0800, ipv4(1, b"\x08"))),  # ICMP of 1 byte
        (1, eth(0x86DD, ipv6(6, tcp())[:50])),
        (1, eth(0x86DD, b"\x40" + ipv6(6, tcp())[1:])),  # version 4 in an IPv6 header
        (1, eth(0x8100, b"\x00")),  # cut VLAN tag
        (113, b"\x00" * 10),
        (276, b"\x00" * 19),
        (0, b"\x02\x00"),
        (104, b"\x0f"),
        (101, b""),
        (101, b"\x75" + b"\0" * 30),
    ],
)
def test_malformed_packets_are_counted_never_raised(linktype, data):
    rec, res, f, l4 = one(linktype, data)
    assert rec is None and l4 is None and res.malformed == 1 and res.decoded == 0
    assert isinstance(f["_malformed"], str) and f["_malformed"]


def test_malformed_keeps_what_was_decoded():
    _, _, f, _ = one(1, eth(0x0800, ipv4(6, tcp(hlen=16))))
    assert f["eth"]["type"] == 0x0800 and f["ip"]["src"] == "10.0.0.1" and f["tcp"]["hdr_len"] == 16
    assert "TCP header length" in f["_malformed"]


def test_batch_counts_add_up():
    batch = [
        (i, float(i), 1, 0, pkt) for i, pkt in enumerate([GOOD, b"", eth(0x0806, arp_packet()), GOOD[:20]])
    ]
    res = decode_batch(batch)
    assert (res.decoded, res.malformed, res.non_ip, len(res.records)) == (2, 2, 1, 1)
    assert decode_batch([]) == ([], 0, 0, 0, 0)


# --- application-layer hook ----------------------------------------------------------------------
class RecordingInspector:
    """Stands in for services.decoder.app.inspector.AppInspector: records what it is given."""

    def __init__(self, fail_on: bytes = b"") -> None:
        self.calls: list[tuple] = []
        self.expired: list[float] = []
        self.fail_on = fail_on

    def inspect(self, ts, proto, src, dst, sport, dport, tcp_flags, tcp_seq, payload):
        if self.fail_on and payload == self.fail_on:
            raise ValueError("inspector bug")
        self.calls.append((ts, proto, src, dst, sport, dport, tcp_flags, tcp_seq, payload))
        return {"seen": len(self.calls)} if payload else None

    def expire(self, ts):
        self.expired.append(ts)


def test_app_inspector_calls_and_results():
    pkts = [
        eth(0x0800, ipv4(6, tcp(flags=0x02))),  # SYN: called
        eth(0x0800, ipv4(6, tcp(flags=0x10))),  # pure ACK: not called
        eth(0x0800, ipv4(6, tcp(flags=0x18, payload=b"GET /"))),  # payload: called
        eth(0x0800, ipv4(17, udp(payload=b"dns"))),  # UDP payload: called
        eth(0x0800, ipv4(17, udp())),  # empty UDP: not called
        eth(0x0800, ipv4(6, tcp(flags=0x18, payload=b"boom"))),  # inspector raises: counted
        eth(0x0800, ipv4(17, udp(payload=b"x" * 16), fragw=0x2000, total=20 + 40)),  # fragment: not called
    ]
    app = RecordingInspector(fail_on=b"boom")
    res = decode_batch([(i, 10.0 + i, 1, len(p), p) for i, p in enumerate(pkts)], app)
    assert [c[1] for c in app.calls] == [6, 6, 17]
    assert app.calls[1][-1] == b"GET /" and app.calls[2][-1] == b"dns"
    assert [r[R_APP] for r in res.records] == [None, None, {"seen": 2}, {"seen": 3}, None, None, None]
    assert res.app_errors == 1 and res.decoded == 7 and app.expired == [16.0]
    for i, pkt in enumerate(pkts[:4]):  # dissect hands out exactly what the fast path inspects
        _, l4 = dissect(i, 10.0 + i, 1, len(pkt), pkt)
        expected = [c for c in app.calls if c[0] == 10.0 + i]
        assert (l4 is None) == (not expected)
        if l4:
            assert l4 == expected[0][1:]
