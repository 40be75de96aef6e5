"""Packed frame bodies: packets and records (shared/packed.py) and its hand-written compiled twin
(scripts/cython/_packed_c.pyx).

What the decoder and the flow-tracker get from a packed body must be exactly what msgpack gave
them: the same tuples, field types included, for every packet of the corpus and the bench
capture and every record the decoder makes of them. Both implementations must write the same
bytes, refuse the same tuples (those go as a list) and reject every damaged body with
ValueError only, never another exception.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from services.decoder.app.inspector import AppInspector
from services.decoder.fastpath import decode_batch
from shared import compiled, frames
from tests.conftest import BENCH_PCAP, PCAPS
from tests.test_decoder_corpus import read_packets
from tests.twin_helpers import compiled_twin

PURE = compiled.pure_module("shared.packed")


def _compiled_module():
    return compiled_twin("shared.packed")


IMPLS = {"pure": lambda: PURE, "compiled": _compiled_module}


def _packet_batches(path: Path, size: int = 512) -> list[list[tuple]]:
    packets = read_packets(path)
    return [packets[i : i + size] for i in range(0, len(packets), size)]


@pytest.fixture(scope="module")
def packet_batches() -> list[list[tuple]]:
    out = []
    for path in sorted(p for p in PCAPS.rglob("*") if p.is_file()):
        out.extend(_packet_batches(path))
    out.extend(_packet_batches(BENCH_PCAP))
    return out


@pytest.fixture(scope="module")
def corpus_batches(packet_batches) -> list[list[tuple]]:
    app = AppInspector()  # one for all: flows never span two captures' batches in a way that matters here
    return [r for r in (decode_batch(b, app).records for b in packet_batches) if r]


def _via_msgpack(batch: list[tuple], ftype: str = frames.FrameType.RECORDS) -> list[tuple]:
    """What the receiving stage got before: the batch through a frame as msgpack lists."""
    buf = frames.encode(ftype, "sender-0", 0, batch)
    return list(frames.decode(buf).body)


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """Equal, and with the same types in every slot (1 == 1.0 == True must not pass)."""
    return a == b and all(
        type(x) is type(y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)
    )


def test_every_corpus_record_round_trips_as_msgpack_gave_it(corpus_batches):
    twin = _compiled_module()
    records = apps = v6 = 0
    for batch in corpus_batches:
        body = PURE.pack_records(batch)
        assert body is not None
        assert twin.pack_records(batch) == body
        want = _via_msgpack(batch)
        assert _same(PURE.unpack_records(body), want)
        assert _same(twin.unpack_records(body), want)
        # the frame carries the packed body as msgpack bin: it comes back as the same bytes
        framed = frames.decode(frames.encode(frames.FrameType.RECORDS, "decoder-0", 1, body)).body
        assert framed == body
        records += len(batch)
        apps += sum(r[12] is not None for r in batch)
        v6 += sum(len(r[4]) == 16 for r in batch)
    # the comparison covered real traffic of every kind the layout has
    assert records > 180_000 and apps > 1_000 and v6 > 1_000


BASE = (7, 1.5, 60, 6, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 1234, 80, 0x18, 20, 0, 99, None)


def _with(**slots: object) -> tuple:
    rec = list(BASE)
    for k, v in slots.items():
        rec[int(k[1:])] = v
    return tuple(rec)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "record",
    [
        _with(s1=1),  # an int timestamp: msgpack keeps it an int, the layout would make it a float
        _with(s0=-1),
        _with(s0=2**64),
        _with(s2=2**32),
        _with(s3=256),
        _with(s6=65536),
        _with(s7=-1),
        _with(s8=True),  # a bool is not an int here: msgpack keeps it True
        _with(s9=2**32),
        _with(s10=256),
        _with(s11=2**63),
        _with(s4=b"\x01\x02\x03"),
        _with(s5="10.0.0.2"),
        _with(s12={"x": object()}),  # an app map msgpack cannot carry
        BASE[:12],
        list(BASE),
    ],
)
def test_a_record_that_does_not_fit_the_layout_sends_the_batch_as_a_list(impl, record):
    mod = IMPLS[impl]()
    assert mod.pack_records([BASE, record]) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_edge_values_round_trip(impl):
    mod = IMPLS[impl]()
    batch = [
        _with(s0=2**64 - 1, s2=2**32 - 1, s3=255, s6=65535, s7=0, s8=0x1FF, s9=2**32 - 1, s10=255, s11=-(2**63)),
        _with(s11=-1, s1=float("inf"), s4=bytes(16), s5=bytes(range(16))),
        _with(s12={"dns.answers": [["a.example", 1, 60, "10.0.0.3"]], "tls.sni": "é\x00\x1b"}),
        _with(s4=bytes(16), s12={"raw": b"\xff\x00"}),
    ]
    body = mod.pack_records(batch)
    assert body is not None and body == PURE.pack_records(batch)
    assert _same(mod.unpack_records(body), _via_msgpack(batch))
    assert mod.unpack_records(mod.pack_records([])) == []


@pytest.mark.parametrize("impl", IMPLS)
def test_every_damaged_body_is_a_value_error_or_records_both_agree_on(impl, corpus_batches):
    mod = IMPLS[impl]()
    rng = random.Random(14)
    with_app = next(b for b in corpus_batches if any(r[12] is not None for r in b))
    body = PURE.pack_records(with_app[:40])
    _damage(mod.unpack_records, PURE.unpack_records, body, rng, width=13)


# --- packets ------------------------------------------------------------------------------------
def test_every_corpus_packet_round_trips_as_msgpack_gave_it(packet_batches):
    twin = _compiled_module()
    packets = 0
    links = set()
    for batch in packet_batches:
        body = PURE.pack_packets(batch)
        assert body is not None and twin.pack_packets(batch) == body
        want = _via_msgpack(batch, frames.FrameType.PACKETS)
        assert _same(PURE.unpack_packets(body), want)
        assert _same(twin.unpack_packets(body), want)
        packets += len(batch)
        links.update(p[2] for p in batch)
    assert packets > 183_388 and len(links) >= 4  # Ethernet, SLL, SLL2, raw, null, ... all covered


PKT = (7, 1.5, 1, 60, b"\x00" * 60)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "packet",
    [
        (7, 1, 1, 60, b""),  # an int timestamp stays an int through msgpack
        (-1, 1.5, 1, 60, b""),
        (2**64, 1.5, 1, 60, b""),
        (7, 1.5, 65536, 60, b""),
        (7, 1.5, 1, 2**32, b""),
        (7, 1.5, True, 60, b""),
        (7, 1.5, 1, 60, bytearray(b"x")),
        (7, 1.5, 1, 60),
        [7, 1.5, 1, 60, b""],
    ],
)
def test_a_packet_that_does_not_fit_the_layout_sends_the_batch_as_a_list(impl, packet):
    assert IMPLS[impl]().pack_packets([PKT, packet]) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_packets_edge_values_round_trip_and_damage_is_a_value_error(impl, packet_batches):
    mod = IMPLS[impl]()
    edge = [(2**64 - 1, -0.0, 65535, 2**32 - 1, b""), (1, float("nan"), 0, 0, bytes(range(256)))]
    body = mod.pack_packets(edge)
    assert body == PURE.pack_packets(edge)
    got = mod.unpack_packets(body)
    assert got[0] == edge[0] and str(got[1][1]) == "nan" and got[1][4] == edge[1][4]
    assert mod.unpack_packets(mod.pack_packets([])) == []
    body = PURE.pack_packets(packet_batches[0][:20])
    _damage(mod.unpack_packets, PURE.unpack_packets, body, random.Random(15))


Unpack = Callable[[bytes], list[tuple]]


def _damage(unpack: Unpack, reference: Unpack, body: bytes, rng: random.Random, width: int | None = None) -> None:
    """Every truncation, a byte too many and 3,000 random changes of ``body``: ValueError, or
    the same tuples as the reference (of ``width`` fields when given); and a count the body
    cannot hold is refused before anything is allocated for it."""
    for cut in range(len(body)):
        with pytest.raises(ValueError):
            unpack(body[:cut])
    with pytest.raises(ValueError):
        unpack(body + b"\x00")
    for _ in range(3000):
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        damaged = bytes(damaged)
        try:
            got = unpack(damaged)
        except ValueError:
            with pytest.raises(ValueError):
                reference(damaged)
            continue
        assert _same_nan(got, reference(damaged))
        if width is not None:
            assert all(type(r) is tuple and len(r) == width for r in got)
    with pytest.raises(ValueError, match="count"):
        unpack(body[:2] + (2**32 - 1).to_bytes(4, "little") + body[6:])


def _same_nan(a: list[tuple], b: list[tuple]) -> bool:
    """_same, with a damaged timestamp that became NaN equal to itself."""
    return repr(a) == repr(b) and all(
        type(x) is type(y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)
    )
