"""Tunnels other than VXLAN: GRE (IP, PPP, Ethernet, ERSPAN I/II/III), Geneve, MPLS, PPPoE,
IP-in-IP, 6in4, QinQ, Cisco FabricPath, VLAN inside ERSPAN.

Packets are built byte by byte. For each encapsulation: `read`'s dissector and the pipeline's
fast path both report the inner 5-tuple, display filters see the inner and the outer layers
(Wireshark: a field matches any layer), and the capture sharder sends both directions of the
inner flow to one decoder even when the outer headers differ by direction. Last, `pktscope run`
(two decoders, real processes) and `pktscope read --flows` agree on flows inside GRE, Geneve
and MPLS.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest

from services.capture.sharding import make_sharder
from services.cli.filter import compile_filter
from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from tests.pipeline_helpers import pktscope, write_pcap

INNER_A, INNER_B = "10.1.0.1", "10.2.0.2"
OUTER_A, OUTER_B = "192.0.2.1", "198.51.100.2"
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("02000000000b")


# --- builders ------------------------------------------------------------------------------------
def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(proto: int, payload: bytes, src: str, dst: str) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def ipv6(nxt: int, payload: bytes, src: str, dst: str) -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            nxt,
            64,
            socket.inet_pton(socket.AF_INET6, src),
            socket.inet_pton(socket.AF_INET6, dst),
        )
        + payload
    )


def tcp(sport: int, dport: int, flags: int = 0x18, seq: int = 1, ack: int = 1, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(etype: int, payload: bytes, src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def inner_ip(reply: bool = False, flags: int = 0x18, payload: bytes = b"GET / HTTP/1.1\r\n\r\n") -> bytes:
    if reply:
        return ipv4(6, tcp(80, 40000, flags, payload=payload), INNER_B, INNER_A)
    return ipv4(6, tcp(40000, 80, flags, payload=payload), INNER_A, INNER_B)


def gre(proto: int, body: bytes, key: int | None = None, seq: int | None = None, version: int = 0) -> bytes:
    flags = (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0) | version
    out = struct.pack("!HH", flags, proto)
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out + body


def outer_ip(proto: int, body: bytes, reply: bool) -> bytes:
    return ipv4(proto, body, OUTER_B, OUTER_A) if reply else ipv4(proto, body, OUTER_A, OUTER_B)


def vlan_frame(inner: bytes, vid: int = 30) -> bytes:
    return eth(0x8100, struct.pack("!HH", vid, 0x0800) + inner)


# Each builder: (inner IP packet, reply?) -> an Ethernet frame carrying it in the tunnel
ENCAPS = {
    "gre_ip": lambda p, r: eth(0x0800, outer_ip(47, gre(0x0800, p, key=7), r)),
    "gre_ppp": lambda p, r: eth(
        0x0800,
        outer_ip(47, gre(0x880B, b"\xff\x03\x00\x21" + p, key=(len(p) << 16) | 5, seq=3, version=1), r),
    ),
    "gre_teb": lambda p, r: eth(0x0800, outer_ip(47, gre(0x6558, eth(0x0800, p)), r)),
    "erspan1": lambda p, r: eth(0x0800, outer_ip(47, gre(0x88BE, eth(0x0800, p)), r)),
    "erspan2": lambda p, r: eth(
        0x0800,
        outer_ip(47, gre(0x88BE, struct.pack("!HHI", 0x1000 | 30, 0x0005, 9) + eth(0x0800, p), seq=1), r),
    ),
    "erspan3_vlan": lambda p, r: eth(
        0x0800,
        outer_ip(47, gre(0x22EB, struct.pack("!HHIHH", 0x2000, 0x0005, 1, 0, 0) + vlan_frame(p), seq=1), r),
    ),
    "geneve": lambda p, r: eth(
        0x0800,
        outer_ip(17, udp(50000 + r, 6081, struct.pack("!BBHI", 0, 0, 0x6558, 77 << 8) + eth(0x0800, p)), r),
    ),
    "geneve_ip": lambda p, r: eth(
        0x0800,
        outer_ip(
            17, udp(50000 + r, 6081, struct.pack("!BBHI", 1, 0, 0x0800, 78 << 8) + b"\x01\x02\x03\x04" + p), r
        ),
    ),
    "mpls": lambda p, r: eth(0x8847, struct.pack("!II", (100 + r) << 12 | 64, 16 << 12 | 0x100 | 64) + p),
    "pppoe": lambda p, r: eth(0x8864, struct.pack("!BBHHH", 0x11, 0, 0x1234, len(p) + 2, 0x0021) + p),
    "ipip": lambda p, r: eth(0x0800, outer_ip(4, p, r)),
    "qinq": lambda p, r: eth(0x88A8, struct.pack("!HHHH", 100, 0x8100, 200, 0x0800) + p),
    "fabricpath": lambda p, r: eth(0x8903, struct.pack("!H", 0x0041) + eth(0x0800, p)),
    "gre_mpls": lambda p, r: eth(
        0x0800, outer_ip(47, gre(0x8847, struct.pack("!I", 20 << 12 | 0x100 | 64) + p), r)
    ),
}
LAYER = {
    "gre_ip": "gre",
    "gre_ppp": "gre",
    "gre_teb": "gre",
    "erspan1": "gre",
    "erspan2": "erspan",
    "erspan3_vlan": "erspan",
    "geneve": "geneve",
    "geneve_ip": "geneve",
    "mpls": "mpls",
    "pppoe": "pppoes",
    "ipip": "ip",
    "qinq": "vlan",
    "fabricpath": "cfp",
    "gre_mpls": "mpls",
}
OUTER_IP = {
    "gre_ip",
    "gre_ppp",
    "gre_teb",
    "erspan1",
    "erspan2",
    "erspan3_vlan",
    "geneve",
    "geneve_ip",
    "ipip",
    "gre_mpls",
}


@pytest.mark.parametrize("kind", sorted(ENCAPS))
def test_inner_flow_in_read_and_fast_path(kind):
    frame = ENCAPS[kind](inner_ip(), False)
    fields, l4 = dissect(1, 1.0, 1, len(frame), frame)
    assert "_malformed" not in fields, fields
    assert l4[:5] == (6, socket.inet_aton(INNER_A), socket.inet_aton(INNER_B), 40000, 80)
    rec = decode_batch([(1, 1.0, 1, len(frame), frame)]).records
    assert len(rec) == 1 and rec[0][3:8] == l4[:5] and rec[0][2] == len(frame)  # the outer wire length
    assert fields["ip"]["src"] == INNER_A and fields["tcp"]["dstport"] == 80
    match = {
        f: compile_filter(f)(fields)
        for f in (
            LAYER[kind],
            f"ip.src == {INNER_A}",
            f"ip.addr == {OUTER_A}",
            "tcp.port == 80",
            "ip.src === 10.1.0.1",
        )
    }
    assert match[LAYER[kind]] and match[f"ip.src == {INNER_A}"] and match["tcp.port == 80"]
    assert match[f"ip.addr == {OUTER_A}"] == (kind in OUTER_IP)  # the outer header matches too
    assert match["ip.src === 10.1.0.1"] == (kind not in OUTER_IP)  # === needs every ip.src
    json.dumps({k: v for k, v in fields.items() if not k.startswith("_")}, default=str)


def test_tunnel_fields_have_wireshark_names():
    def fields_of(kind):
        frame = ENCAPS[kind](inner_ip(), False)
        return dissect(1, 1.0, 1, len(frame), frame)[0]

    checks = {
        "gre_ip": ["gre.proto == 0x0800", "gre.key == 7", "gre.flags.key == 1"],
        "erspan2": ["erspan.version == 1", "erspan.spanid == 5", "erspan.vlan == 30", "gre.proto == 0x88be"],
        "erspan3_vlan": ["erspan.version == 2", "vlan.id == 30", "gre.proto == 0x22eb"],
        "geneve": ["geneve.vni == 77", "udp.dstport == 6081", "geneve.proto_type == 0x6558"],
        "mpls": ["mpls.label == 100", "mpls.label == 16", "mpls.bottom == 1", "mpls.ttl == 64"],
        "pppoe": ["pppoe.session_id == 0x1234", "ppp.protocol == 0x0021"],
        "qinq": ["vlan.id == 100", "vlan.id == 200", "vlan.etype == 0x0800"],
        "fabricpath": ["cfp", "eth.type == 0x8903", "eth.type == 0x0800"],
        "gre_ppp": ["gre.flags.version == 1", "ppp.protocol == 0x0021"],
    }
    for kind, filters in checks.items():
        f = fields_of(kind)
        assert all(compile_filter(expr)(f) for expr in filters), (
            kind,
            [e for e in filters if not compile_filter(e)(f)],
        )


@pytest.mark.parametrize("kind", sorted(ENCAPS))
def test_both_directions_of_the_inner_flow_reach_one_decoder(kind):
    shard = make_sharder(1, 7)
    there = {shard(ENCAPS[kind](inner_ip(), False))}
    back = {shard(ENCAPS[kind](inner_ip(reply=True), True))}
    assert there == back


def test_broken_tunnel_headers_stay_outer_packets():
    for body in (
        b"",
        b"\x00",
        gre(0x0800, b"\x45\x00"),
        gre(0x1234, b"x" * 40),
        b"\x40\x00\x08\x00" + b"\0" * 40,
    ):
        frame = eth(0x0800, ipv4(47, body, OUTER_A, OUTER_B))
        fields, _ = dissect(1, 1.0, 1, len(frame), frame)
        rec = decode_batch([(1, 1.0, 1, len(frame), frame)])
        assert fields["ip"]["src"] == OUTER_A
        assert rec.malformed + len(rec.records) + rec.non_ip == 1
    broken_geneve = eth(0x0800, ipv4(17, udp(1, 6081, b"\xc0" + b"\0" * 10), OUTER_A, OUTER_B))
    fields, l4 = dissect(1, 1.0, 1, len(broken_geneve), broken_geneve)
    assert fields["udp"]["dstport"] == 6081 and l4[4] == 6081


def tunnelled_sessions(kind: str, t0: float, sport: int) -> list:
    """A whole TCP session (handshake, data both ways, FIN) inside tunnel ``kind``, both directions."""
    S, A, F, P = 0x02, 0x10, 0x01, 0x08
    c, s = 1000, 5000
    steps = [
        (False, S, c, 0, b""),
        (True, S | A, s, c + 1, b""),
        (False, A, c + 1, s + 1, b""),
        (False, A | P, c + 1, s + 1, b"GET / HTTP/1.1\r\nHost: inner.test\r\n\r\n"),
        (True, A | P, s + 1, c + 37, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (False, F | A, c + 37, s + 29, b""),
        (True, F | A, s + 29, c + 38, b""),
    ]
    out = []
    for i, (reply, flags, seq, ack, data) in enumerate(steps):
        if reply:
            pkt = ipv4(6, tcp(80, sport, flags, seq, ack, data), INNER_B, INNER_A)
        else:
            pkt = ipv4(6, tcp(sport, 80, flags, seq, ack, data), INNER_A, INNER_B)
        out.append((t0 + i * 0.01, ENCAPS[kind](pkt, reply)))
    return out


FLOW_KEYS = (
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "pkts_out",
    "bytes_out",
    "pkts_in",
    "bytes_in",
    "state",
    "reason",
)


def test_run_and_read_flows_agree_inside_gre_geneve_and_mpls(short_tmp):
    packets = []
    for n, kind in enumerate(("gre_ip", "erspan2", "geneve", "mpls", "gre_mpls")):
        for k in range(3):
            packets += tunnelled_sessions(kind, 1_700_000_000 + n * 10 + k, 41000 + n * 10 + k)
    capture = write_pcap(short_tmp / "tunnels.pcap", packets)
    flow_log = short_tmp / "flows.jsonl"
    pktscope(
        "run",
        "--read",
        str(capture),
        "--decoders",
        "2",
        "--run-dir",
        str(short_tmp / "run"),
        "--state-dir",
        str(short_tmp / "state"),
        "--learning",
        "0",
        "--flow-log",
        str(flow_log),
        "--json",
        timeout=300,
    )
    ran = sorted(tuple(ev[k] for k in FLOW_KEYS) for ev in map(json.loads, flow_log.read_text().splitlines()))
    proc = pktscope("read", str(capture), "--flows", "--json")
    read = sorted(tuple(f[k] for k in FLOW_KEYS) for f in map(json.loads, proc.stdout.splitlines()))
    assert ran == read
    assert len(ran) == 15  # one flow per inner session: the tunnel endpoints are no flow of their own
    assert {(r[1], r[3], r[4]) for r in ran} == {(INNER_A, INNER_B, 80)}
    assert all(r[5] == 4 and r[7] == 3 and r[9] == "closed" for r in ran), ran[:3]
