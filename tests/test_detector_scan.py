"""services/detector/events.scan: the detector handles a frame's inbound flows' events as one
time per run of them, and raises, writes and counts exactly what handling each event did.

The reference is the engine with a scan that gives every inbound row's own time (one item per
row: the loop the detector ran before); both run on the bench capture's events and on those
events with times pushed back (late events, inbound and outbound) and damaged rows mixed in.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import redis

from services.detector import engine as engine_module
from services.detector import events
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from shared.compiled import pure_module
from shared.config import PipelineConfig
from shared.flowevents import INDEX
from tests import inprocess_pipeline
from tests.test_script_batch import FRAME, _state

BENCH = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bench" / "sv-merged.pcap"
_TS, _OUTBOUND = INDEX["ts"], INDEX["outbound"]


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory):
    from tests.conftest import start_redis

    proc, url = start_redis(tmp_path_factory.mktemp("rows"))
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        rows = inprocess_pipeline.run(str(BENCH), r, "rows", decoders=2, keep=True).rows
    finally:
        proc.terminate()
        proc.wait()
    return [tuple(row) if isinstance(row, list) else row for row in rows]


def scan_each(rows, watermark):
    """The reference: every inbound row's own time, as the detector's loop took them one by one."""
    items, taken, late, bad = [], 0, 0, 0
    for raw in rows:
        ts = events.inbound_time(raw)
        if ts is None:
            ev = events.parse(raw)
            if ev is None:
                bad += 1
                continue
            taken += 1
            items.append((ev, raw))
            watermark = max(watermark, ev.ts)
            continue
        taken += 1
        if ts < watermark:
            late += 1
        else:
            watermark = ts
        items.append(ts)
    return items, taken, late, bad


def _run(r: redis.Redis, prefix: str, rows: list, frame: int) -> tuple:
    cfg = PipelineConfig(redis_prefix=prefix, run_id="same-run")
    cfg.detector.learning = 0
    cfg.detector.attribute_processes = False
    engine = DetectorEngine(r, cfg, enrichers=Enrichers())
    engine.observed = []
    alerts, observed = [], []
    for i in range(0, len(rows), frame):
        alerts += engine.process(rows[i : i + frame])
        observed += [(raw, flow.entity, flow.label) for raw, flow in engine.observed]
        engine.observed.clear()
    alerts += engine.finish()
    for alert in alerts:
        alert.pop("id")
    return alerts, _state(r, prefix), dict(engine.c), engine.watermark, observed


def _disordered(rows: list, seed: int) -> list:
    """The rows with some times pushed back (late events) and damaged rows mixed in."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        if rng.random() < 0.05:
            row = row[:_TS] + (row[_TS] - rng.choice((0.5, 5.0, 60.0)),) + row[_TS + 1 :]
        out.append(row)
        if rng.random() < 0.01:
            out.append(rng.choice((row[:5], "not a row", row[:_TS] + ("x",) + row[_TS + 1 :])))
    return out


@pytest.mark.parametrize("disorder", [None, 1, 2])
def test_one_time_per_inbound_run_raises_writes_and_counts_as_each_event_did(rdb, bench_rows, disorder, monkeypatch):
    rows = bench_rows if disorder is None else _disordered(bench_rows, disorder)
    inbound = sum(1 for row in rows if events.inbound_time(row) is not None)
    assert inbound > len(rows) // 2  # what the scan is for: most rows are inbound flows'
    scanned = _run(rdb, f"scan{disorder}", rows, FRAME)
    monkeypatch.setattr(engine_module, "scan", scan_each)
    each = _run(rdb, f"each{disorder}", rows, FRAME)
    assert len(each[0]) > 500
    assert scanned[0] == each[0]  # the alerts, in order
    assert scanned[1] == each[1]  # everything written
    assert scanned[2] == each[2]  # the counters (late and bad events among them)
    assert scanned[3] == each[3] and scanned[4] == each[4]
    if disorder is not None:
        assert each[2]["late_events"] > 1000 and each[2]["bad_events"] > 100, each[2]


def test_the_compiled_scan_gives_what_the_pure_one_does(bench_rows):
    pure = pure_module("services.detector.events")
    assert events.scan is not pure.scan  # scripts/setup built the twin (CI runs it)
    rows = _disordered(bench_rows, 3) + [(), ("start",) * 25, tuple(bench_rows[0][:_TS]) + (float("nan"),) * 23]
    for start in (0.0, bench_rows[len(bench_rows) // 2][_TS], float("inf")):
        for i in range(0, len(rows), FRAME):
            want, got = pure.scan(rows[i : i + FRAME], start), events.scan(rows[i : i + FRAME], start)
            assert got[1:] == want[1:]
            assert [x if type(x) is float else (tuple(x[0]), x[1]) for x in got[0]] == [
                x if type(x) is float else (tuple(x[0]), x[1]) for x in want[0]
            ]
