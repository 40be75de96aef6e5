"""services/detector/flows_skim: a FLOWS frame read in place gives what decoding and scanning it gives.

Both walks are held to it: the compiled twin the detector runs and the pure reference module.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from functools import cache

import msgpack
import pytest

from scripts.bench_detector import event_frames
from services.detector import flows_skim
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from services.detector.events import scan
from shared import compiled, frames
from shared.config import PipelineConfig
from shared.flowevents import FIELDS, INDEX
from tests.conftest import BENCH_PCAP, PCAPS

PURE = compiled.pure_module("services.detector.flows_skim")
WALKS = {"compiled": flows_skim.scan, "pure": PURE.scan}


@cache
def corpus_frames() -> list[bytes]:
    """Every corpus capture's flow events as the flow-tracker frames them."""
    bufs: list[bytes] = []
    for pcap in sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng")):
        bufs += event_frames(pcap, 64)
    return bufs


def decoded(buf: bytes) -> frames.Frame | None:
    """The frame as frames.decode gives it, when it is a FLOWS frame with rows (None: a bad frame)."""
    try:
        frame = frames.decode(buf)
    except frames.FrameError:
        return None
    if frame.type != frames.FrameType.FLOWS or not isinstance(frame.body, (list, tuple)):
        return None
    return frame


def reference(buf: bytes, watermark: float):
    """What the detector got before: the frame decoded, then events.scan."""
    frame = decoded(buf)
    return None if frame is None else (frame.sender, frame.seq, scan(frame.body, watermark))


def same(walk, buf: bytes, watermark: float) -> None:
    """The walk's answer is the reference's, or None (left to the general path); never an error."""
    got = walk(buf, watermark)
    if got is not None:
        assert got == reference(buf, watermark)


def test_the_twin_is_the_one_running() -> None:
    assert compiled.STATUS["services.detector.flows_skim"] == "compiled"


@pytest.mark.parametrize("name", WALKS)
def test_every_corpus_frame_is_read_in_place_with_the_same_answer(name: str) -> None:
    walk = WALKS[name]
    bufs = corpus_frames()
    rows = Counter()
    watermark = -math.inf
    for buf in bufs:
        got = walk(buf, watermark)
        assert got is not None  # the flow-tracker's own frames never need the general path
        assert got == reference(buf, watermark)
        items, _taken, _late, _bad = got[2]
        rows["runs"] += sum(1 for i in items if type(i) is float)
        rows["parsed"] += sum(1 for i in items if type(i) is not float)
        watermark = max([watermark] + [i if type(i) is float else i[0].ts for i in items])
    assert len(bufs) > 50 and rows["runs"] > 100 and rows["parsed"] > 100


def test_the_bench_capture_reads_the_same_in_place() -> None:
    bufs = event_frames(BENCH_PCAP, 512)
    watermark = 0.0
    late = 0
    for buf in bufs:
        got = flows_skim.scan(buf, watermark)
        assert got is not None and got == reference(buf, watermark)
        late += got[2][2]
    assert len(bufs) > 100


def row(**values) -> tuple:
    base = dict.fromkeys(FIELDS)
    base.update(ev="start", fid=1, ts=100.0, proto=17, ipv=4, src="10.0.0.1", sport=5353, dst="10.0.0.2",
                dport=53, outbound=False, first=100.0, last=100.0, pkts_out=1, bytes_out=80, pkts_in=0,
                bytes_in=0, d_pkts_out=1, d_bytes_out=80, d_pkts_in=0, d_bytes_in=0, state="", name="",
                name_src="", app={}, reason=None)  # fmt: skip
    base.update(values)
    return tuple(base[f] for f in FIELDS)


def frame_of(rows: list) -> bytes:
    return frames.encode(frames.FrameType.FLOWS, "flowtracker", 7, rows)


ODD_ROWS = {
    "outbound": [row(outbound=True, name="example.org", name_src="dns")],
    "nan time": [row(ts=math.nan)],
    "int time": [row(ts=100)],
    "unknown kind": [row(ev="begin")],
    "kind as str8": None,  # built below: the same text in a longer form
    "short row": [row()[:-1]],
    "a map row": [dict(zip(FIELDS, row(outbound=True), strict=True))],
    "a list": [[1, 2, 3]],
    "late and early": [row(ts=50.0), row(ts=150.0), row(outbound=True, ts=120.0), row(ts=10.0)],
    "nested app": [row(app={"dns.answers": [["a.example", 1, ["10.0.0.9"]]], "k": {"x": [1.5, None, True]}})],
    "credential": [row(outbound=True, app={"anomaly.kind": "cleartext_credential", "anomaly.user": "bob"})],
    "non-ascii name": [row(name="bücher.example", outbound=True), row(name="ünïcode")],
    "bytes field": [row(app={"raw": b"\x00\xff"})],
    "int keys": [row(app={1: "a", 2.5: "b", None: "c"})],
    "big ints": [row(bytes_out=2**63, pkts_in=-(2**40), fid=2**20)],
    "empty": [],
}


@pytest.mark.parametrize("name", WALKS)
@pytest.mark.parametrize("case", sorted(ODD_ROWS))
def test_rows_of_every_shape_give_the_same_answer(name: str, case: str) -> None:
    rows = ODD_ROWS[case]
    if rows is None:
        buf = frame_of([row()])
        buf = buf.replace(b"\xa5start", b"\xd9\x05start", 1)
    else:
        buf = frame_of(rows)
    for watermark in (-math.inf, 75.0, 200.0):
        got = WALKS[name](buf, watermark)
        assert got is not None and got == reference(buf, watermark)


DAMAGED = {
    "trailing byte": lambda b: b + b"\x00",
    "cut short": lambda b: b[:-3],
    "other version": lambda b: b.replace(b"\xa5flows\x02", b"\xa5flows\x03", 1),
    "other type": lambda b: b.replace(b"\xa5flows", b"\xa5ticks", 1),
    "reserved byte": lambda b: b.replace(b"\xc2", b"\xc1", 1),
    "bad utf-8": lambda b: b.replace(b"10.0.0.2", b"10.0.\xff.2", 1),
    "ext type": lambda b: b.replace(b"\xc0", b"\xd4\x01\x00", 1),
    "seq as a str": lambda b: b.replace(b"flowtracker\x07", b"flowtracker\xa17", 1),
    "body not an array": lambda b: b[: b.index(b"\x07") + 1] + msgpack.packb({"rows": 1}),
}


@pytest.mark.parametrize("name", WALKS)
@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_frames_are_left_to_the_general_path(name: str, case: str) -> None:
    good = frame_of([row(), row(outbound=True), row(ev="end", reason="idle")])
    buf = DAMAGED[case](good)
    assert buf != good
    assert WALKS[name](buf, 0.0) is None


def test_a_map_keyed_by_a_container_and_deep_nesting_are_left_to_msgpack() -> None:
    keyed = frame_of([row()]).replace(b"\x80", b"\x81\x91\x01\x02", 1)  # app {(1,): 2}
    assert frames.decode(keyed).body[0][INDEX["app"]] == {(1,): 2}
    deep: object = 1
    for _ in range(flows_skim.MAX_DEPTH + 2):
        deep = [deep]
    for buf in (keyed, frame_of([row(app={"x": deep})])):
        for walk in WALKS.values():
            assert walk(buf, 0.0) is None


def fuzzed_frames(seed: int, count: int):
    """``count`` frames of our own with a few bytes changed, some cut short."""
    rng = random.Random(seed)
    seeds = [frame_of(rows) for rows in ODD_ROWS.values() if rows] + corpus_frames()[:20]
    for _ in range(count):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if not buf:
                break
            at = rng.randrange(len(buf))
            if rng.random() < 0.2:
                del buf[at:]
            else:
                buf[at] = rng.randrange(256)
        yield bytes(buf)


@pytest.mark.parametrize("name", WALKS)
def test_fuzzed_frames_never_raise_and_never_disagree(name: str) -> None:
    walk = WALKS[name]
    answered = 0
    for buf in fuzzed_frames(14, 3000 if name == "compiled" else 600):
        got = walk(buf, 50.0)
        if got is not None:
            answered += 1
            assert got == reference(buf, 50.0)
    assert answered > 0


def engine(r, prefix: str) -> DetectorEngine:
    cfg = PipelineConfig(redis_prefix=prefix, run_id="skim")
    cfg.detector.learning = 0
    cfg.detector.attribute_processes = False
    return DetectorEngine(r, cfg, enrichers=Enrichers(), batch_scripts=True)


def test_the_engine_raises_the_same_alerts_from_frames_read_in_place(redis_url: str) -> None:
    from shared.redis_conn import connect

    r = connect(redis_url)
    decoded, skimmed = engine(r, "decoded"), engine(r, "skimmed")
    a: list = []
    b: list = []
    for buf in corpus_frames():
        a += decoded.process(frames.decode(buf).body)
        got = flows_skim.scan(buf, skimmed.watermark)
        assert got is not None
        b += skimmed.process((), scanned=got[2])
    a += decoded.finish()
    b += skimmed.finish()

    def essence(alerts: list) -> list:
        return [{k: v for k, v in x.items() if k not in ("id", "entity_key")} for x in alerts]

    assert len(a) > 20 and essence(a) == essence(b)
    assert decoded.c == skimmed.c
    assert decoded.watermark == skimmed.watermark


def check_live_rows(walk, buf: bytes) -> bool:
    """live_rows' entries are the decoded rows (inbound ones still packed); True when it read it."""
    got = walk(buf)
    if got is None:
        return False
    frame = decoded(buf)
    assert (got[0], got[1]) == (frame.sender, frame.seq)
    items = got[2]
    assert len(items) == 4 * len(frame.body)
    for i, row in enumerate(frame.body):
        key, ev, ts, packed = items[4 * i : 4 * i + 4]
        if key is None:  # compared packed: a NaN is not equal to itself
            assert msgpack.packb(ev) == msgpack.packb(row) and ts is None and packed is None
            continue
        assert msgpack.unpackb(packed, raw=False, use_list=False, strict_map_key=False) == row
        assert row[INDEX["outbound"]] is not True and type(row[INDEX["ts"]]) is float
        assert (key, ev, ts) == (flows_skim.identity(row), row[INDEX["ev"]], row[INDEX["ts"]])
    return True


@pytest.mark.parametrize("name", WALKS)
def test_live_rows_hold_the_decoded_rows_inbound_ones_still_packed(name: str) -> None:
    walk = {"compiled": flows_skim.live_rows, "pure": PURE.live_rows}[name]
    packed = 0
    for buf in corpus_frames() + [frame_of(rows) for rows in ODD_ROWS.values() if rows is not None]:
        assert check_live_rows(walk, buf)
        packed += sum(1 for key in walk(buf)[2][::4] if key is not None)
    assert packed > 500
    for case in DAMAGED.values():
        assert walk(case(frame_of([row(), row(outbound=True)]))) is None


@pytest.mark.parametrize("name", WALKS)
def test_live_rows_of_fuzzed_frames_agree_or_step_aside(name: str) -> None:
    walk = {"compiled": flows_skim.live_rows, "pure": PURE.live_rows}[name]
    read = 0
    for buf in fuzzed_frames(41, 2000 if name == "compiled" else 400):
        read += check_live_rows(walk, buf)
    assert read > 0


def test_an_address_that_is_not_text_is_unpacked_not_kept_packed() -> None:
    items = flows_skim.live_rows(frame_of([row(src=7)]))[2]
    assert items[0] is None and items[1][INDEX["src"]] == 7


def test_a_float_among_the_rows_is_a_bad_row_not_a_time() -> None:
    """scan_rows takes a float for an inbound time read in place: one from the wire must not be."""
    buf = frame_of([row(), 1.5, row(outbound=True)])
    assert reference(buf, 0.0)[2][3] == 1  # the general path counts it bad
    for walk in WALKS.values():
        same(walk, buf, 0.0)
