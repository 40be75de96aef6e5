"""services/detector/script_batch.py: a frame's script calls as one dispatcher call answer and
write exactly as the same calls sent one EVALSHA each, errors included."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from services.detector import connections, lua, script_batch
from services.detector import engine as engine_module
from services.detector.engine import DISPATCH, DetectorEngine
from services.detector.enrichment import Enrichers
from shared.config import PipelineConfig
from shared.redis_batch import run_batch
from tests import inprocess_pipeline

BENCH = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bench" / "sv-merged.pcap"
FRAME = 300  # events per frame, about what the flow-tracker sends


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory):
    """The flow events of the bench capture (its pipeline in one process, on a throwaway Redis)."""
    from tests.conftest import start_redis

    proc, url = start_redis(tmp_path_factory.mktemp("rows"))
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        return inprocess_pipeline.run(str(BENCH), r, "rows", decoders=2, keep=True).rows
    finally:
        proc.terminate()
        proc.wait()


def _state(r: redis.Redis, prefix: str) -> dict:
    """Every key of ``prefix`` (prefix taken out) with its content; streams without entry ids."""
    out: dict = {}
    for key in r.scan_iter(f"{prefix}:*", count=1000):
        kind = r.type(key)
        if kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = [fields for _id, fields in r.xrange(key)]
        else:
            value = r.get(key)
        out[key[len(prefix) :]] = value
    return out


def _run(r: redis.Redis, prefix: str, rows: list, batch_scripts: bool, poison: list[str] = ()) -> tuple:
    cfg = PipelineConfig(redis_prefix=prefix, run_id="same-run")
    cfg.detector.learning = 0
    cfg.detector.attribute_processes = False
    for key in poison:  # a key of the wrong type: the scripts touching it fail
        r.set(prefix + key, "not a hash")
    engine = DetectorEngine(r, cfg, enrichers=Enrichers(), batch_scripts=batch_scripts)
    assert (DISPATCH in engine._sha) == batch_scripts
    alerts = []
    for i in range(0, len(rows), FRAME):
        alerts += engine.process(rows[i : i + FRAME])
    alerts += engine.finish()
    for alert in alerts:
        alert.pop("id")
    return alerts, _state(r, prefix), engine.redis_errors, dict(engine.c)


@pytest.mark.parametrize("per_run", [engine_module.DISPATCH_MAX_CALLS, 7])
def test_the_engine_raises_and_writes_the_same_with_and_without_the_dispatcher(rdb, bench_rows, per_run, monkeypatch):
    """Also with a frame's calls split over many dispatcher runs (7 calls each: every frame)."""
    monkeypatch.setattr(engine_module, "DISPATCH_MAX_CALLS", per_run)
    one_each = _run(rdb, "each", bench_rows, batch_scripts=False)
    dispatched = _run(rdb, "disp", bench_rows, batch_scripts=True)
    assert len(one_each[0]) > 500  # a learning window of 0: many new destinations
    assert dispatched[0] == one_each[0]
    assert dispatched[1] == one_each[1]
    assert dispatched[2] == one_each[2] == 0
    assert dispatched[3] == one_each[3]


def test_a_failing_call_fails_alone_as_its_own_evalsha_would(rdb, bench_rows):
    """Two entities' volume hashes hold strings: their VOLUME calls fail (WRONGTYPE), counted,
    and every other call of the same frames is answered and written as without the dispatcher."""
    probe = _run(rdb, "probe", bench_rows, batch_scripts=False)[1]
    volume_keys = sorted(k for k in probe if k.endswith(":vol"))[:2]
    assert len(volume_keys) == 2, sorted(probe)[:20]
    one_each = _run(rdb, "each2", bench_rows, batch_scripts=False, poison=volume_keys)
    dispatched = _run(rdb, "disp2", bench_rows, batch_scripts=True, poison=volume_keys)
    assert one_each[2] > 0 and dispatched[2] == one_each[2]
    assert dispatched[0] == one_each[0] and dispatched[1] == one_each[1]


def test_a_flushed_script_cache_is_reloaded_and_nothing_runs_twice(rdb, bench_rows):
    cfg = PipelineConfig(redis_prefix="flush", run_id="r")
    cfg.detector.learning = 0
    cfg.detector.attribute_processes = False
    engine = DetectorEngine(rdb, cfg, enrichers=Enrichers())
    half = len(bench_rows) // 2
    first = engine.process(bench_rows[:half])
    rdb.script_flush()  # as a restarted Redis: the dispatcher is gone, NOSCRIPT for the frame
    second = engine.process(bench_rows[half:]) + engine.finish()
    reference = _run(rdb, "ref", bench_rows, batch_scripts=False)
    assert len(first) + len(second) == len(reference[0])
    assert [a["ts"] for a in first + second] == [a["ts"] for a in reference[0]]
    assert engine.redis_errors == 0


def test_replies_in_order_with_an_unknown_script_and_an_error_in_place(rdb):
    scripts = {"touch": lua.TOUCH, "conn_pair": connections.PAIR}
    sha = rdb.script_load(script_batch.dispatcher_source(scripts))
    rdb.set("bad", "x")
    calls = [
        ("touch", ["e1"], [1.5, "display"]),
        ("touch", ["bad"], [1.5, "display"]),  # WRONGTYPE inside the script
        ("nope", [], ["an", "argument"]),  # no such script
        ("conn_pair", ["p1"], ["ent", "lab", 1.0, 2.0, 1, 10, 0]),
    ]
    (answers,) = run_batch(rdb, [script_batch.dispatch_command(sha, calls)])
    assert answers[0] == 0 and answers[3] == 0
    assert isinstance(answers[1], redis.ResponseError) and "WRONGTYPE" in str(answers[1])
    assert isinstance(answers[2], redis.ResponseError) and "no script nope" in str(answers[2])
    assert rdb.hgetall("e1") == {"last_seen": "1.5", "display": "display"}  # the calls after an error ran
    assert rdb.hgetall("p1")["bytes_out"] == "10"


def test_script_names_must_be_plain_identifiers():
    with pytest.raises(ValueError):
        script_batch.dispatcher_source({"x'] = nil --": "return 0"})
