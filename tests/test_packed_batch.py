"""The decoder's packed batch (services/decoder/packed_batch.py) and its hand-written twin
(scripts/cython/_packed_batch_c.pyx): packed packets in, packed records out.

The twin reads most packets in place and hands the rest to decode_batch one at a time. Both
must give the same RECORDS body (bytes, or the same list on the wire), the same counters and
the same application-layer state, batch after batch with one inspector each: on every corpus
capture and the bench capture, on packets damaged at random (the malformed path), and on bodies
that are not whole (ValueError before anything is decoded).
"""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest

from services.decoder.app.inspector import AppInspector
from shared import compiled, packed
from tests.conftest import BENCH_PCAP, PCAPS
from tests.test_decoder_corpus import read_packets
from tests.twin_helpers import compiled_twin

REFERENCE = compiled.pure_module("services.decoder.packed_batch")


def _twin():
    return compiled_twin("services.decoder.packed_batch")


def _wire(body) -> bytes:
    """What goes into the frame: the packed bytes, or the list as msgpack writes it."""
    return body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)


def _compare(batches: list[list[tuple]], **inspector: int) -> dict[str, int]:
    """Run both over the batches (one inspector each), assert they agree; the totals."""
    twin = _twin()
    ref_app, twin_app = AppInspector(**inspector), AppInspector(**inspector)
    totals = {"packets": 0, "records": 0, "malformed": 0, "non_ip": 0, "apps": 0}
    for i, batch in enumerate(batches):
        body = packed.pack_packets(batch)
        assert body is not None
        want = REFERENCE.decode_packed(body, ref_app)
        got = twin.decode_packed(body, twin_app)
        assert tuple(got[1:]) == tuple(want[1:]), f"batch {i}: counters {tuple(got[1:])} != {tuple(want[1:])}"
        if _wire(got.body) != _wire(want.body):
            mine, theirs = packed.records_of(got.body), packed.records_of(want.body)
            first = next((a, b) for a, b in zip(mine, theirs, strict=False) if a != b)
            pytest.fail(f"batch {i}: records differ ({len(mine)} vs {len(theirs)}); first: {first}")
        records = packed.records_of(want.body)
        totals["packets"] += want.packets
        totals["records"] += len(records)
        totals["malformed"] += want.malformed
        totals["non_ip"] += want.non_ip
        totals["apps"] += sum(r[12] is not None for r in records)
    assert twin_app.all_counters() == ref_app.all_counters()
    assert len(twin_app._table) == len(ref_app._table)
    return totals


def _batches(path: Path, size: int = 512) -> list[list[tuple]]:
    packets = read_packets(path)
    return [packets[i : i + size] for i in range(0, len(packets), size)]


@pytest.mark.parametrize("path", [BENCH_PCAP], ids=["bench"])
def test_the_bench_capture_gives_the_same_records(path):
    totals = _compare(_batches(path))
    assert totals["packets"] == 183_388
    assert totals["records"] > 150_000 and totals["apps"] > 1000


def test_finished_flows_forgotten_under_a_small_bound_give_the_same_records():
    """The twin skips ``state_of`` for the last finished flows it looked up (either direction)
    until the inspector may have changed: a bound of 64 done flows forgets them all the time,
    one direction of a pair without the other, and flows start again on those 5-tuples."""
    totals = _compare(_batches(BENCH_PCAP), max_done=64, max_flows=32)
    assert totals["apps"] > 1000


class _CountingLookups(AppInspector):
    """An inspector that counts the fast path's ``state_of`` look-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        table_get = self._table.get

        def counted(key, default):
            self.lookups += 1
            return table_get(key, default)

        self.state_of = counted


def test_the_twin_looks_finished_flows_up_once_while_their_packets_follow():
    """The skip is taken: most look-ups on the bench capture answer a finished flow the packet
    before also belonged to (96% of the None answers, measured), and the twin does not repeat them."""
    batches = _batches(BENCH_PCAP)
    twin = _twin()
    ref_app, twin_app = _CountingLookups(), _CountingLookups()
    for batch in batches:
        body = packed.pack_packets(batch)
        REFERENCE.decode_packed(body, ref_app)
        twin.decode_packed(body, twin_app)
    assert twin_app.all_counters() == ref_app.all_counters()
    assert ref_app.lookups > 50_000
    assert twin_app.lookups < ref_app.lookups * 0.5, (twin_app.lookups, ref_app.lookups)


def test_every_corpus_capture_gives_the_same_records():
    paths = sorted(p for p in PCAPS.rglob("*") if p.is_file())
    assert len(paths) > 50
    totals = {"packets": 0, "apps": 0}
    for path in paths:
        for key, n in _compare(_batches(path)).items():
            totals[key] = totals.get(key, 0) + n
    assert totals["packets"] > 3000 and totals["apps"] > 300


def test_damaged_packets_give_the_same_records_and_the_same_malformed_count():
    rng = random.Random(7)
    packets = [p for path in sorted(p for p in PCAPS.rglob("*") if p.is_file()) for p in read_packets(path)]
    packets += read_packets(BENCH_PCAP)[:20_000]  # VLAN tags, IPv6 extension chains, GRE, ARP
    damaged = []
    for num, ts, linktype, wirelen, data in packets:
        for _ in range(2):
            b = bytearray(data)
            if rng.random() < 0.3 and len(b) > 1:
                del b[rng.randrange(len(b)) :]  # cut anywhere: in a header, in a payload
            else:
                for _ in range(rng.randint(1, 4)):  # headers' bytes: versions, lengths, protocols, ports
                    if b:
                        b[rng.randrange(min(len(b), 90))] = rng.randrange(256)
            kind = linktype if rng.random() > 0.02 else rng.choice([0, 101, 113, 276])
            damaged.append((num, ts, kind, rng.choice([wirelen, len(b), 0]), bytes(b)))
    rng.shuffle(damaged)
    totals = _compare([damaged[i : i + 256] for i in range(0, len(damaged), 256)])
    assert totals["malformed"] > 2000 and totals["non_ip"] > 500 and totals["records"] > 30_000


class _Odd:
    """An inspector whose findings the records layout cannot carry, and that sometimes fails."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.expired: list[float] = []

    def state_of(self, key, default=None):
        return default

    def inspect(self, ts, proto, src, dst, sport, dport, flags, seq, payload):
        self.calls.append((ts, proto, src, dst, sport, dport, flags, seq, payload))
        if len(self.calls) % 7 == 0:
            raise RuntimeError("an application-layer bug")
        if len(self.calls) % 5 == 0:
            return {"odd": {1, 2}}  # a set: msgpack cannot pack it
        return {"n": len(self.calls)}

    def expire(self, ts):
        self.expired.append(ts)


def test_findings_the_layout_cannot_carry_send_the_batch_as_the_same_list():
    twin = _twin()
    # Ethernet packets the twin reads itself, and Linux cooked ones it hands to decode_batch
    batch = read_packets(BENCH_PCAP)[:300] + read_packets(PCAPS / "decode-sll2-02" / "input.pcap")[:100]
    random.Random(3).shuffle(batch)
    body = packed.pack_packets(batch)
    want_app, got_app = _Odd(), _Odd()
    want = REFERENCE.decode_packed(body, want_app)
    got = twin.decode_packed(body, got_app)
    assert isinstance(want.body, list) and isinstance(got.body, list)
    assert [r[:12] for r in got.body] == [r[:12] for r in want.body]
    assert [r[12] for r in got.body if isinstance(r[12], dict) and "odd" in r[12]] == [
        r[12] for r in want.body if isinstance(r[12], dict) and "odd" in r[12]
    ]
    assert got.app_errors == want.app_errors > 0
    assert got_app.calls == want_app.calls and len(want_app.calls) > 20
    assert got_app.expired == want_app.expired == [batch[-1][1]]  # once, at the last packet's time


@pytest.mark.parametrize("cut", [1, 7, 30, 200])
def test_a_body_that_is_not_whole_is_refused_before_anything_is_decoded(cut):
    twin = _twin()
    body = packed.pack_packets(read_packets(BENCH_PCAP)[:50])
    for bad in (body[:-cut], body + b"\x00" * cut, b"X" + body[1:]):
        app = _Odd()
        with pytest.raises(ValueError):
            twin.decode_packed(bad, app)
        with pytest.raises(ValueError):
            REFERENCE.decode_packed(bad, _Odd())
        assert app.calls == [] and app.expired == []
