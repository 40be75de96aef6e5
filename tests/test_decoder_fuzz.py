"""Corrupted real packets and arbitrary bytes: never an exception, and both decoders agree."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from tests.test_decoder_corpus import ALL_PACKETS

LINKTYPES = [0, 1, 12, 14, 101, 104, 108, 113, 228, 229, 276, 147]


def seeds() -> list[tuple]:
    """A few packets of every capture, so every link type and protocol mix is mutated."""
    out = []
    for packets in ALL_PACKETS.values():
        out.extend(packets[:6])
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and buf:  # flip a few bytes, mostly inside the headers
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(len(buf), 80))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del buf[rng.randrange(len(buf) + 1) :]
    elif kind == 2 and buf:  # set a length-ish field to an extreme
        i = rng.randrange(min(len(buf), 70))
        buf[i : i + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"\x00\x01", b"\x4f\xff"))
    elif kind == 3:  # insert junk
        i = rng.randrange(len(buf) + 1)
        buf[i:i] = rng.randbytes(rng.randint(1, 12))
    else:  # flip bits anywhere
        for _ in range(rng.randint(1, 8)):
            if buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def check_batch(batch: list[tuple]) -> tuple[int, int]:
    res = decode_batch(batch)
    assert res.decoded + res.malformed == len(batch)
    decoded_nums = {r[0]: r for r in res.records}
    malformed = 0
    for pkt in batch:
        fields, l4 = dissect(*pkt)
        reason = fields.get("_malformed")
        assert reason is None or not reason.startswith("decoder error"), (reason, pkt)
        if reason is not None:
            malformed += 1
            assert pkt[0] not in decoded_nums, (fields, pkt)
        elif "ip" in fields or "ipv6" in fields:
            rec = decoded_nums[pkt[0]]
            l4 = fields.get("tcp") or fields.get("udp")
            if l4 is not None and rec[6]:
                assert (rec[6], rec[7]) == (l4["srcport"], l4["dstport"])
        if l4 is not None:
            assert pkt[0] in decoded_nums
    assert malformed == res.malformed
    return res.decoded, res.malformed


def test_mutated_corpus_packets():
    rng = random.Random(20240611)
    base = seeds()
    batch = []
    for i in range(6000):
        _num, ts, linktype, _wl, data = rng.choice(base)
        bad = mutate(rng, data)
        batch.append((i, ts, linktype, len(bad), bad))
    decoded, malformed = check_batch(batch)
    assert decoded > 1000 and malformed > 500  # the mutations really reach both outcomes


def test_packets_on_the_wrong_link_type():
    rng = random.Random(7)
    base = seeds()
    batch = [(i, 0.0, rng.choice(LINKTYPES), len(p[4]), p[4]) for i, p in enumerate(rng.sample(base, 800))]
    check_batch(batch)


@settings(max_examples=400, deadline=None)
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=120))
def test_arbitrary_bytes(linktype, data):
    check_batch([(1, 0.0, linktype, len(data), data)])


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(
        [
            bytes(12) + b"\x08\x00",  # Ethernet IPv4
            bytes(12) + b"\x86\xdd",  # Ethernet IPv6
            bytes(12) + b"\x81\x00\x00\x05\x08\x00",  # VLAN IPv4
            bytes(12) + b"\x88\x64\x11\x00\x00\x01\x00\x40\x00\x21",  # PPPoE IPv4
        ]
    ),
    ip=st.binary(min_size=20, max_size=100),
    version=st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x41]),
)
def test_structured_headers(prefix, ip, version):
    data = prefix + bytes([version]) + ip[1:]
    check_batch([(1, 0.0, 1, len(data), data)])
