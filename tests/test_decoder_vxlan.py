"""VXLAN decapsulation: the real capture through `pktscope read`, and packets built with dpkt
through both the dissector and the fast path (inner 5-tuple, outer layers, broken headers,
nesting bound)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import dpkt
import pytest
from conftest import PCAPS, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.filter import compile_filter
from services.decoder import vxlan
from services.decoder.app import AppInspector
from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from shared.records import FRAG_NONE, R_APP, R_DPORT, R_DST, R_PAYLEN, R_PROTO, R_SPORT, R_SRC, R_WIRELEN
from tests.test_decoder_corpus import read_packets

VXLAN_PCAP = PCAPS / "vxlan-decoder-03" / "vxlan.pcap"
CORPUS_VNI = 0x54FA11

VTEP_A, VTEP_B = socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.2")
VTEP6_A = socket.inet_pton(socket.AF_INET6, "2001:db8:ff::1")
VTEP6_B = socket.inet_pton(socket.AF_INET6, "2001:db8:ff::2")
POD_A, POD_B = socket.inet_aton("10.244.1.5"), socket.inet_aton("10.244.2.9")


# --- builders (dpkt) ---------------------------------------------------------------------------
def vxlan_header(vni: int, flags: int = vxlan.FLAG_I) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8)


def udp_datagram(sport: int, dport: int, payload: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)


def ip4_frame(src: bytes, dst: bytes, l4: dpkt.Packet, proto: int = 17) -> bytes:
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, data=l4)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def ip6_frame(src: bytes, dst: bytes, l4: dpkt.Packet, proto: int = 17) -> bytes:
    ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, plen=len(bytes(l4)), data=l4)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x86DD, data=ip))


def dns_query(name: str, ident: int = 0x1234) -> bytes:
    return bytes(dpkt.dns.DNS(id=ident, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)]))


def inner_dns_frame(name: str = "pod.example.com") -> bytes:
    """A pod's DNS query: 10.244.1.5:40001 -> 10.244.2.9:53."""
    return ip4_frame(POD_A, POD_B, udp_datagram(40001, 53, dns_query(name)))


def tunnelled(inner: bytes, vni: int = 0x123456, dport: int = 4789, header: bytes | None = None) -> bytes:
    """``inner`` behind VXLAN between two IPv4 VTEPs (outer source port 51000)."""
    payload = (vxlan_header(vni) if header is None else header) + inner
    return ip4_frame(VTEP_A, VTEP_B, udp_datagram(51000, dport, payload))


def both(data: bytes, app=None):
    """(record or None, batch result, fields, l4) of one Ethernet packet, both paths."""
    res = decode_batch([(1, 2.5, 1, len(data), data)], app)
    assert res.decoded + res.malformed == 1
    fields, l4 = dissect(1, 2.5, 1, len(data), data)
    assert ("_malformed" in fields) == (res.malformed == 1)
    return (res.records[0] if res.records else None), res, fields, l4


def assert_plain_udp_to_vtep(data: bytes) -> None:
    """The datagram decodes as ordinary UDP to the VTEP: outer 5-tuple record, nothing raised."""
    rec, res, fields, l4 = both(data)
    assert res.malformed == 0 and "_malformed" not in fields
    assert (rec[R_SRC], rec[R_DST], rec[R_PROTO], rec[R_SPORT], rec[R_DPORT]) == (
        VTEP_A,
        VTEP_B,
        17,
        51000,
        4789,
    )
    assert fields["ip"]["src"] == "198.51.100.1" and fields["udp"]["dstport"] == 4789
    assert "outer" not in (fields.get("vxlan") or {})
    assert l4 is None or l4[3:5] == (51000, 4789)


class RecordingInspector:
    """Records what the fast path hands the application layer (the AppInspector interface)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.expired: list[float] = []

    def inspect(self, ts, proto, src, dst, sport, dport, tcp_flags, tcp_seq, payload):
        self.calls.append((proto, src, dst, sport, dport, payload))
        return None

    def expire(self, ts):
        self.expired.append(ts)


# --- the corpus capture ------------------------------------------------------------------------
def test_corpus_capture_shows_inner_dns_through_pktscope_read():
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.read", str(VXLAN_PCAP), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    packets = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(packets) == 100
    assert all(
        p["vxlan"]["vni"] == CORPUS_VNI and p["vxlan"]["outer"]["udp"]["dstport"] == 4789 for p in packets
    )
    assert all(p["frame"]["protocols"].startswith("eth:ethertype:ip:udp:vxlan:eth:") for p in packets)
    names = set()
    for p in packets:
        for section in ("queries", "answers"):
            names.update(r["name"] for r in p.get("dns", {}).get(section, ()))
    assert "ec2-18-196-145-224.eu-central-1.compute.amazonaws.com" in names
    assert "224.145.196.18.in-addr.arpa" in names
    answers = {a["data"] for p in packets for a in p.get("dns", {}).get("answers", ())}
    assert "172.31.17.188" in answers
    assert {p["tcp"]["dstport"] for p in packets if "tcp" in p} >= {22}  # inner SSH, not port 4789


def test_corpus_capture_filters_on_inner_and_outer_fields():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.read",
            str(VXLAN_PCAP),
            "-Y",
            f'vxlan.vni == {CORPUS_VNI} && vxlan.outer.udp.dstport == 4789 && dns.qry.name contains "amazonaws"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 and all(" DNS " in line for line in lines)
    assert "172.31.0.238 -> 172.31.0.2" in lines[0]  # the summary shows the inner addresses


def test_corpus_capture_fast_path_makes_inner_records():
    packets = read_packets(VXLAN_PCAP)
    app = AppInspector()
    res = decode_batch(packets, app)
    assert (res.decoded, res.malformed, res.non_ip, res.app_errors) == (100, 0, 0, 0)
    assert len(res.records) == 100
    assert not any(4789 in (r[R_SPORT], r[R_DPORT]) for r in res.records)
    assert {r[R_DPORT] for r in res.records if r[R_PROTO] == 17} >= {53, 123}
    assert [r[R_WIRELEN] for r in res.records] == [len(p[4]) for p in packets]  # the outer frame's bytes
    dns_names = {q[0] for r in res.records if r[R_APP] for q in r[R_APP].get("dns.queries", ())}
    assert "ec2-18-196-145-224.eu-central-1.compute.amazonaws.com" in dns_names


# --- synthetic packets -------------------------------------------------------------------------
def test_synthetic_vxlan_dns_both_paths():
    inner = inner_dns_frame()
    pkt = tunnelled(inner)
    rec, res, fields, l4 = both(pkt, AppInspector())
    query = dns_query("pod.example.com")
    assert rec[:11] == (1, 2.5, len(pkt), 17, POD_A, POD_B, 40001, 53, 0, len(query), FRAG_NONE)
    assert rec[R_APP]["dns.queries"] == [["pod.example.com", "A"]]
    assert l4 == (17, POD_A, POD_B, 40001, 53, 0, 0, query)

    assert fields["frame"]["protocols"] == "eth:ethertype:ip:udp:vxlan:eth:ethertype:ip:udp"
    assert fields["frame"]["len"] == len(pkt)
    assert fields["ip"]["src"] == "10.244.1.5" and fields["ip"]["dst"] == "10.244.2.9"
    assert fields["udp"]["dstport"] == 53
    node = fields["vxlan"]
    assert node["vni"] == 0x123456 and node["flags"] == vxlan.FLAG_I << 8
    assert set(node["outer"]) == {"eth", "ip", "udp"}
    assert node["outer"]["ip"]["src"] == "198.51.100.1" and node["outer"]["udp"]["srcport"] == 51000


def test_synthetic_ipv6_outer_port_8472_inner_tcp_reaches_the_inspector():
    segment = dpkt.tcp.TCP(sport=45000, dport=443, seq=99, flags=0x18, off=5, data=b"\x16\x03\x01hello")
    inner = ip4_frame(POD_A, POD_B, segment, proto=6)
    pkt = ip6_frame(VTEP6_A, VTEP6_B, udp_datagram(33000, 8472, vxlan_header(42) + inner))
    app = RecordingInspector()
    rec, res, fields, l4 = both(pkt, app)
    assert app.calls == [(6, POD_A, POD_B, 45000, 443, b"\x16\x03\x01hello")]
    assert app.expired == [2.5]  # once per batch, not once more for the inner frame
    assert (rec[R_PROTO], rec[R_SRC], rec[R_DST], rec[R_SPORT], rec[R_DPORT], rec[R_PAYLEN]) == (
        6,
        POD_A,
        POD_B,
        45000,
        443,
        8,
    )
    assert rec[R_WIRELEN] == len(pkt)
    assert fields["vxlan"]["vni"] == 42 and fields["vxlan"]["outer"]["ipv6"]["src"] == "2001:db8:ff::1"
    assert "ipv6" not in fields and fields["tcp"]["dstport"] == 443
    assert l4[:5] == (6, POD_A, POD_B, 45000, 443)


def test_inner_arp_is_non_ip():
    arp = dpkt.arp.ARP(spa=POD_A, tpa=POD_B, sha=b"\x02" * 6, tha=b"\x00" * 6)
    inner = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6, type=0x0806, data=arp))
    rec, res, fields, l4 = both(tunnelled(inner))
    assert rec is None and (res.decoded, res.non_ip) == (1, 1)
    assert fields["arp"]["src"]["proto_ipv4"] == "10.244.1.5" and "ip" not in fields
    assert fields["vxlan"]["outer"]["ip"]["dst"] == "198.51.100.2" and l4 is None


def test_other_udp_ports_are_not_decapsulated():
    pkt = tunnelled(inner_dns_frame(), dport=4790)  # VXLAN-GPE's port: a different header
    rec, _, fields, _ = both(pkt)
    assert rec[R_DPORT] == 4790 and "vxlan" not in fields


def test_first_fragment_is_not_decapsulated():
    payload = vxlan_header(7) + inner_dns_frame()
    dgram = bytes(udp_datagram(51000, 4789, payload))
    ip = dpkt.ip.IP(src=VTEP_A, dst=VTEP_B, p=17, mf=1, data=dgram)
    pkt = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))
    rec, _, fields, _ = both(pkt)
    assert rec[R_DPORT] == 4789 and "vxlan" not in fields


# --- broken VXLAN headers ----------------------------------------------------------------------
BROKEN_PAYLOADS = {
    "empty": b"",
    "short header": vxlan_header(5)[:7],
    "header only": vxlan_header(5),
    "header and half an ethernet header": vxlan_header(5) + b"\x02" * 10,
    "I flag clear": vxlan_header(5, flags=0x00) + inner_dns_frame(),
    "garbage": bytes(range(60)),
}


@pytest.mark.parametrize("payload", BROKEN_PAYLOADS.values(), ids=BROKEN_PAYLOADS.keys())
def test_broken_headers_are_plain_udp(payload):
    assert_plain_udp_to_vtep(tunnelled(b"", header=payload))


def test_inner_frame_that_does_not_decode_leaves_plain_udp():
    bad_ip = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800)) + b"\x45\x00\x00"
    pkt = tunnelled(bad_ip)
    assert_plain_udp_to_vtep(pkt)
    fields, _ = dissect(1, 2.5, 1, len(pkt), pkt)
    assert fields["vxlan"]["vni"] == 0x123456 and fields["vxlan"]["inner_malformed"] == "truncated header"


def test_snaplen_cut_inside_the_inner_frame_is_not_an_error():
    pkt = tunnelled(inner_dns_frame())
    cut = pkt[: 14 + 20 + 8 + 8 + 14 + 10]  # ends inside the inner IPv4 header
    res = decode_batch([(1, 2.5, 1, len(pkt), cut)])
    fields, _ = dissect(1, 2.5, 1, len(pkt), cut)
    assert res.malformed == 0 and "_malformed" not in fields
    assert res.records[0][R_DPORT] == 4789 and fields["udp"]["dstport"] == 4789
    assert res.records[0][R_WIRELEN] == fields["frame"]["len"] == len(pkt)


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=8), inner=st.binary(max_size=80), flags=st.sampled_from([0x08, 0x0C, 0x88]))
def test_random_bytes_behind_vxlan_never_raise_and_paths_agree(header, inner, flags):
    for payload in (header, vxlan_header(1, flags) + inner):
        pkt = tunnelled(b"", header=payload)
        rec, res, fields, _ = both(pkt)
        assert res.malformed == 0
        if rec is None:
            assert res.non_ip == 1 and "ip" not in fields and "ipv6" not in fields
            continue
        ip = fields.get("ip") or fields.get("ipv6")
        family = socket.AF_INET if len(rec[R_SRC]) == 4 else socket.AF_INET6
        assert socket.inet_ntop(family, rec[R_SRC]) == ip["src"]
        assert rec[R_WIRELEN] == fields["frame"]["len"]


# --- nesting bound -----------------------------------------------------------------------------
def nested(levels: int) -> bytes:
    """``levels`` VXLAN headers around the DNS frame, VNI i at level i (1 outermost)."""
    frame = inner_dns_frame()
    for vni in range(levels, 0, -1):
        frame = tunnelled(frame, vni=vni)
    return frame


def test_two_levels_are_decapsulated():
    rec, _, fields, l4 = both(nested(2))
    assert (rec[R_SRC], rec[R_DPORT]) == (POD_A, 53) and l4[3:5] == (40001, 53)
    assert [node["vni"] for node in fields["vxlan"]] == [1, 2]
    assert all(node["outer"]["udp"]["dstport"] == 4789 for node in fields["vxlan"])
    assert fields["frame"]["protocols"].count("vxlan") == 2 and fields["ip"]["src"] == "10.244.1.5"


FILTER_EXPECTATIONS = {
    "vxlan": True,
    "vxlan.vni == 1": True,  # either level's VNI
    "vxlan.vni == 2": True,
    "vxlan.vni == 3": False,
    "ip.src == 10.244.1.5 && udp.port == 53": True,  # plain ip/udp fields are the inner packet's
    "ip.addr == 198.51.100.1": True,  # as in Wireshark: a field of any layer, the outer one too
    "ip.addr == 198.51.100.9": False,
    "ip.src == 10.244.1.5 && ip.src == 198.51.100.1": True,
    "ip.src === 10.244.1.5": False,  # every ip.src: the tunnel endpoints' too
    "vxlan.outer.ip.src == 198.51.100.1 && vxlan.outer.udp.dstport == 4789": True,
}


def test_filters_see_inner_layers_and_every_vni():
    pkt = nested(2)
    fields, _ = dissect(1, 2.5, 1, len(pkt), pkt)
    matches = {expr: compile_filter(expr)(fields) for expr in FILTER_EXPECTATIONS}
    assert matches == FILTER_EXPECTATIONS


def test_third_level_stays_plain_udp():
    pkt = nested(3)
    rec, res, fields, _ = both(pkt)
    assert res.malformed == 0
    assert (rec[R_SRC], rec[R_DST], rec[R_DPORT]) == (VTEP_A, VTEP_B, 4789)  # the 3rd tunnel, undecoded
    assert [node["vni"] for node in fields["vxlan"]] == [1, 2]
    assert fields["udp"]["dstport"] == 4789 and "dns" not in fields
    assert vxlan.MAX_NESTING == 2


def test_deep_hostile_chain_is_cheap_and_bounded():
    pkt = nested(200)  # 200 headers deep: must neither recurse 200 times nor fail
    rec, res, fields, _ = both(pkt)
    assert res.malformed == 0 and rec[R_DPORT] == 4789
    assert len(fields["vxlan"]) == vxlan.MAX_NESTING
