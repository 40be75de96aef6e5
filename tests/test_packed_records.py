"""The flow-tracker's packed records by reference (services/flowtracker/packed_records.py) and its
hand-written twin (scripts/cython/_packed_records_c.pyx).

The twin reads each record in place in its body and runs the flow table's per-record loop over
it. Against the reference (each reference expanded into its record tuple, then ``FlowTable.add``)
it must give the same flow events, in the same order, and the same table counters: on every corpus
capture and the bench capture through the capture-order merge of two decoders, on batches that
mix references with record tuples (good and bad ones), on records with odd values (a NaN or
infinite time, fragments, IPv6, a flow with itself), and ``refs_of`` must refuse exactly the
bodies ``unpack_records`` refuses, with the same message.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import pytest

from services.decoder.app.inspector import AppInspector
from services.decoder.fastpath import decode_batch
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.merge import CaptureOrderMerge
from services.flowtracker.table import FlowTable
from shared import compiled, packed
from shared.config import FlowSettings, PipelineConfig
from tests.conftest import BENCH_PCAP, PCAPS
from tests.inprocess_pipeline import capture_frames
from tests.twin_helpers import compiled_twin

REFERENCE = compiled.pure_module("services.flowtracker.packed_records")


def _twin():
    return compiled_twin("services.flowtracker.packed_records")


def _decoded(path: Path, decoders: int = 2) -> list[list[tuple]]:
    """Per decoder, its frames as the flow-tracker receives them: packed bodies (a list where the
    layout cannot carry a batch), ticks and the end of stream."""
    out = []
    for frames in capture_frames(str(path), decoders, 512):
        app = AppInspector()
        own = []
        for kind, body in frames:
            if kind == "pkts":
                records = decode_batch(body, app).records
                own.append(("recs", packed.pack_records(records) or records))
            else:
                own.append((kind, body))
        out.append(own)
    return out


def _replay(decoded: list[list[tuple]], module, seed: int = 0, table: FlowTable | None = None):
    """Merge the decoders' frames (interleaved by ``seed``) into a table through ``module``."""
    cfg = PipelineConfig(decoders=len(decoded))
    merge = CaptureOrderMerge(len(decoded))
    table = table or FlowTable(cfg.flow, LocalMatcher(["10.0.0.0/8", "192.168.0.0/16"]))
    rng = random.Random(seed)
    pos = [0] * len(decoded)
    rows: list = []
    while not merge.all_finished:
        d = rng.choice([i for i in range(len(decoded)) if pos[i] < len(decoded[i])])
        kind, body = decoded[d][pos[d]]
        pos[d] += 1
        if kind == "recs":
            merge.add(f"decoder-{d}", module.refs_of(body) if type(body) is bytes else packed.records_of(body))
        elif kind == "tick":
            merge.tick(f"decoder-{d}", *body)
        else:
            merge.finish(f"decoder-{d}")
        records = merge.release()
        if records:
            module.add_records(table, records)
        table.advance(merge.watermark)
        rows += table.take_rows()
    table.finish("eos", merge.highest)
    rows += table.take_rows()
    return rows, _counters(table)


def _counters(table: FlowTable) -> tuple:
    return (table.records, table.bad_records, table.flows_started, table.flows_ended, table.evicted, len(table))


def _same(decoded, seed=0) -> tuple[int, int]:
    want_rows, want = _replay(decoded, REFERENCE, seed)
    got_rows, got = _replay(decoded, _twin(), seed)
    assert got == want
    if got_rows != want_rows:
        first = next(i for i, (a, b) in enumerate(zip(got_rows, want_rows, strict=False)) if a != b)
        pytest.fail(f"event {first} of {len(want_rows)} differs: {got_rows[first]} != {want_rows[first]}")
    return len(want_rows), want[0]


def test_the_bench_capture_gives_the_same_events_by_reference():
    events, records = _same(_decoded(BENCH_PCAP))
    assert records > 180_000 and events > 25_000


def test_every_corpus_capture_gives_the_same_events_by_reference():
    paths = sorted(p for p in PCAPS.rglob("*") if p.is_file())
    assert len(paths) > 50
    total = 0
    for seed, path in enumerate(paths):
        events, _records = _same(_decoded(path), seed)
        total += events
    assert total > 1000


# --- odd records, mixed batches ----------------------------------------------------------------
A, B = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 9])
A6, B6 = bytes(15) + b"\x01", bytes([0x20, 1, 0xD, 0xB8]) + bytes(11) + b"\x09"


def _rec(num, ts, src=A, dst=B, sport=40000, dport=443, flags=0x10, proto=6, wl=60, pl=0, frag=0, seq=1, app=None):
    return (num, ts, wl, proto, src, dst, sport, dport, flags, pl, frag, seq, app)


def _odd_records() -> list[tuple]:
    recs = [
        _rec(1, 1.0, flags=0x02),
        _rec(2, 1.1, B, A, 443, 40000, flags=0x12),
        _rec(3, 1.2, pl=100, seq=2),
        _rec(4, 1.3, B, A, 443, 40000, pl=1400, seq=9),
        _rec(5, 1.3, B, A, 443, 40000, pl=1400, seq=9),  # a retransmission
        _rec(6, math.nan),  # a NaN time on a known flow, and on a new one
        _rec(7, math.nan, sport=1),
        _rec(8, 1.4, A6, B6, 5353, 5353, proto=17, flags=0, app={"dns.queries": (("a.example", "A"),)}),
        _rec(9, 1.5, A, A, 7, 7, proto=17, flags=0),  # a flow with itself
        _rec(10, 1.5, A, A, 7, 8, proto=17, flags=0),
        _rec(11, 1.6, A, B, 0, 0, proto=17, flags=0, frag=2, wl=1500),  # a later fragment
        _rec(12, 1.6, A, B, 9, 9, proto=17, flags=0, frag=1, wl=1500),  # a first fragment
        _rec(13, 1.7, proto=1, sport=0, dport=0, flags=0, seq=0x0800),  # ICMP echo
        _rec(14, 200.0, flags=0x02, seq=77),  # the TCP 5-tuple again, long after: a new flow
        _rec(15, math.inf, proto=47, sport=0, dport=0, flags=0),
        _rec(16, 300.0, wl=0xFFFFFFFF, pl=0xFFFFFFFF, seq=2**63 - 1, flags=0xFFFF),
        _rec(17, 300.5, flags=0x11),  # FIN
        _rec(18, 300.6, B, A, 443, 40000, flags=0x04),  # RST
    ]
    return recs


def _odd_batches() -> list:
    """The odd records packed a few to a body, with record tuples and bad ones between them."""
    recs = _odd_records()
    batches = []
    for i in range(0, len(recs), 4):
        body = packed.pack_records(recs[i : i + 4])
        assert body is not None
        batches.append(body)
    return batches


def _mixed(module, batches) -> list:
    """A batch of references with record tuples and bad records among them."""
    out: list = []
    for j, body in enumerate(batches):
        out += module.refs_of(body)
        out.append(_rec(100 + j, 301.0 + j, A, B, 50000 + j, 80, flags=0x02))
        out.append(("junk",))
        out.append((0, "x", 60, 6, b"\x01" * 3, b"\x02" * 3, 1, 2, 0, 0, 0, 0, None))
        out.append((9, 1.0, "six", "tuple", 6, 5))  # six items, but not a reference
    return out


@pytest.mark.parametrize("update_interval", [5.0, 0.0])
def test_odd_records_and_mixed_batches_give_the_same_events(update_interval):
    batches = _odd_batches()
    results = []
    for module in (REFERENCE, _twin()):
        table = FlowTable(FlowSettings(update_interval=update_interval), LocalMatcher(["10.0.0.0/8"]))
        module.add_records(table, _mixed(module, batches))
        table.advance(250.0)
        module.add_records(table, module.refs_of(batches[-1]))  # the same records again
        table.finish("eos", 1000.0)
        results.append((table.take_rows(), _counters(table)))
    assert results[1] == results[0]
    rows, counters = results[0]
    assert counters[1] >= 3 * len(batches)  # the bad records, counted by both
    assert {row[0] for row in rows} >= {"start", "end"}


def test_a_reference_stands_for_its_record():
    body = packed.pack_records(_odd_records())
    twin = _twin()
    refs, pure_refs = twin.refs_of(body), REFERENCE.refs_of(body)
    records = packed.unpack_records(body)
    assert len(refs) == len(pure_refs) == len(records)
    for ref, pure_ref, record in zip(refs, pure_refs, records, strict=True):
        assert ref[2] is not pure_ref[2]  # each module's own mark
        assert _bits(ref[:2] + ref[3:]) == _bits(pure_ref[:2] + pure_ref[3:])
        assert _bits(REFERENCE.record_at(pure_ref)) == _bits(record)


def _bits(items: tuple) -> tuple:
    """Comparable items: a float by its bits (NaN equals itself)."""
    return tuple(struct.pack("<d", x) if type(x) is float else x for x in items)


def _damaged(body: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(len(body))
    choice = rng.randrange(4)
    if choice == 0:
        return body[:cut]
    if choice == 1:
        return body + b"\0" * rng.randrange(1, 9)
    if choice == 2:
        b = bytearray(body)
        b[cut] = rng.randrange(256)
        return bytes(b)
    b = bytearray(body)
    struct.pack_into("<I", b, 2, rng.randrange(1 << 32) if rng.random() < 0.5 else len(_odd_records()) + 1)
    return bytes(b)


def test_damaged_bodies_are_refused_exactly_as_unpack_records_refuses_them():
    twin = _twin()
    body = packed.pack_records(_odd_records())
    rng = random.Random(7)
    refused = 0
    for _ in range(3000):
        bad = _damaged(body, rng)
        try:
            want = packed.unpack_records(bad)
        except ValueError as exc:
            refused += 1
            for module in (twin, REFERENCE):
                with pytest.raises(ValueError) as got:
                    module.refs_of(bad)
                assert str(got.value) == str(exc)
            continue
        refs = twin.refs_of(bad)
        assert [_bits(r[:2] + r[3:]) for r in refs] == [_bits(r[:2] + r[3:]) for r in REFERENCE.refs_of(bad)]
        assert len(refs) == len(want)
    assert refused > 1000
    for not_a_body in ("text", bytearray(body), None):
        for module in (twin, REFERENCE):
            with pytest.raises(ValueError):
                module.refs_of(not_a_body)
