"""Capture's flow-hash sharding: both directions and every fragment of a flow reach one decoder."""

from __future__ import annotations

import struct
from collections import defaultdict

import dpkt
import pcap
import pytest

from services.capture import sharding
from services.decoder.fastpath import decode_batch
from tests.conftest import BENCH_PCAP, PCAPS


def eth(ip: dpkt.Packet, etype: int) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


def tcp4(src: bytes, dst: bytes, sport: int, dport: int, **ip_fields) -> bytes:
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=dpkt.tcp.TCP(sport=sport, dport=dport), **ip_fields)
    ip.len = len(ip)
    return eth(ip, 0x0800)


def general(decoders: int):
    """The un-inlined path the fused Ethernet sharder must agree with."""

    def shard(d: bytes) -> int:
        try:
            return sharding._ethernet(d) % decoders
        except (IndexError, struct.error):
            return 0

    return shard


@pytest.mark.parametrize("decoders", [2, 3, 5])
def test_both_directions_land_on_one_decoder(decoders):
    shard = sharding.make_sharder(1, decoders)
    seen = set()
    for i in range(200):
        a, b = bytes([10, 0, i, 1]), bytes([192, 0, 2, i])
        fwd = shard(tcp4(a, b, 40000 + i, 443))
        assert fwd == shard(tcp4(b, a, 443, 40000 + i))
        seen.add(fwd)
    assert seen == set(range(decoders))  # and the flows spread over every decoder


def test_ipv6_with_extension_headers_hashes_like_its_reply_and_the_general_path():
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    hop = b"\x06\x00" + bytes(6)  # hop-by-hop, next header TCP
    tcp = bytes(dpkt.tcp.TCP(sport=5555, dport=80))
    shard = sharding.make_sharder(1, 3)
    for first, payload in ((6, tcp), (0, hop + tcp)):
        out = bytes(dpkt.ip6.IP6(src=src, dst=dst, nxt=first, hlim=64, plen=len(payload))) + payload
        back_tcp = bytes(dpkt.tcp.TCP(sport=80, dport=5555))
        back = bytes(dpkt.ip6.IP6(src=dst, dst=src, nxt=first, hlim=64, plen=len(payload)))
        back += (hop if first == 0 else b"") + back_tcp
        d_out, d_back = eth(out, 0x86DD), eth(back, 0x86DD)
        assert shard(d_out) == shard(d_back) == general(3)(d_out)


def test_fragments_hash_by_addresses_so_the_whole_datagram_lands_together():
    shard = sharding.make_sharder(1, 4)
    a, b = b"\x0a\x00\x00\x01", b"\xc6\x33\x64\x07"
    first = tcp4(a, b, 1234, 80, mf=1)
    later = eth(dpkt.ip.IP(src=a, dst=b, p=6, offset=24, data=b"x" * 8), 0x0800)
    assert shard(first) == shard(later) == general(4)(first)


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 13, b"\x00" * 12 + b"\x08\x00\x45", b"\x00" * 12 + b"\x86\xdd\x60"]
)
def test_short_packets_go_to_decoder_zero_without_raising(data):
    assert sharding.make_sharder(1, 3)(data) == 0


def test_inlined_ethernet_path_agrees_with_the_general_path_on_the_bench_capture():
    fast, slow = sharding.make_sharder(1, 3), general(3)
    packets = [bytes(d) for _ts, d in pcap.pcap(str(BENCH_PCAP))]
    assert len(packets) == 183_388
    assert [fast(d) for d in packets] == [slow(d) for d in packets]


def test_every_decoded_flow_of_the_corpus_maps_to_one_decoder():
    """What the decoder calls one flow (5-tuple either way) never spans two shards."""
    shards_of: dict[tuple, set[int]] = defaultdict(set)
    for path in [*sorted(PCAPS.glob("*/*.pcap")), BENCH_PCAP]:
        pc = pcap.pcap(str(path), timestamp_in_ns=False)
        lt = pc.datalink()
        shard = sharding.make_sharder(lt, 3)
        packets = [(i, ts, lt, len(d), bytes(d)) for i, (ts, d) in enumerate(pc, 1)]
        by_num = {p[0]: shard(p[4]) for p in packets}
        for rec in decode_batch(packets, None).records:
            num, _ts, _wl, proto, src, dst, sport, dport = rec[:8]
            if rec[10]:  # fragments are portless flows of their address pair
                sport = dport = 0
            ends = sorted([(src, sport), (dst, dport)])
            shards_of[(path.name, proto, *ends[0], *ends[1])].add(by_num[num])
    assert len(shards_of) > 10_000
    split = {k: v for k, v in shards_of.items() if len(v) > 1}
    assert not split, list(split.items())[:5]


def _variants(data: bytes, rng) -> list[bytes]:
    """The frame, cut at every length up to its first 80 bytes, and a few with one byte changed."""
    out = [data[:k] for k in range(0, min(len(data), 80) + 1)]
    for _ in range(4):
        if data:
            i = rng.randrange(min(len(data), 80))
            out.append(data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :])
    return out


def test_byte_reading_shard_agrees_with_the_general_path_on_cut_and_changed_frames():
    """``ethernet_shard`` (a C pointer walk when compiled) gives the general path's answer for
    every Ethernet frame of the corpus, every prefix of it and frames with a byte changed:
    VLAN, QinQ, IPv6 extension headers, fragments, tunnels and short frames included."""
    import random

    rng = random.Random(7)
    checked = 0
    for path in sorted(PCAPS.glob("*/*.pcap")):
        pc = pcap.pcap(str(path))
        if pc.datalink() != 1:
            continue
        for _ts, d in pc:
            for v in _variants(bytes(d), rng):
                for n in (2, 3):
                    assert sharding.ethernet_shard(v, n) == general(n)(v), (path.name, v.hex())
                    checked += 1
    assert checked > 100_000


def test_shard_mix_is_symmetric_and_spreads_small_changes():
    mix = sharding._mix
    assert mix(1, 2, 3, 4) == mix(2, 1, 4, 3)
    assert len({mix(0x0A000001, 0x0A000002, 40000 + i, 443) % 16 for i in range(64)}) == 16
