"""Differential: every corpus capture and the bench capture give the same alerts and flow log with
1, 2 and 3 decoders, in any interleaving of the decoders' frames (stages run in-process, see
tests/inprocess_pipeline.py; the process-level runs are in test_pipeline_determinism.py and
test_pipeline_replay.py)."""

from __future__ import annotations

import json

import pytest
import redis

from tests import inprocess_pipeline
from tests.conftest import BENCH_PCAP, PCAPS, start_redis

CAPTURES = sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_redis(tmp_path_factory.mktemp("diffredis"))
    r = redis.Redis.from_url(url, decode_responses=True)
    yield r
    r.close()
    proc.terminate()
    proc.wait(timeout=10)


def essence(result: inprocess_pipeline.Result) -> tuple[list, list]:
    alerts = [
        (a["kind"], a["entity"], a["title"], a["ts"], json.dumps(a["detail"], sort_keys=True))
        for a in result.alerts
    ]
    flows = [json.dumps(f, sort_keys=True) for f in result.flow_log]
    return alerts, flows


def compare(
    path, r: redis.Redis, tag: str, runs=((1, 0), (2, 1), (3, 2), (3, 7))
) -> inprocess_pipeline.Result:
    reference = None
    first = None
    for decoders, seed in runs:
        prefix = f"{tag}-d{decoders}-s{seed}"
        result = inprocess_pipeline.run(str(path), r, prefix, decoders=decoders, seed=seed)
        assert result.late_events == 0, (path, decoders, seed)
        got = essence(result)
        if reference is None:
            reference, first = got, result
        else:
            assert got[0] == reference[0], (path.name, decoders, seed, "alerts")
            assert got[1] == reference[1], (path.name, decoders, seed, "flow log")
    return first


def test_corpus_captures_same_alerts_and_flows_for_1_2_3_decoders(server):
    assert len(CAPTURES) >= 50
    alerts = flows = 0
    for i, path in enumerate(CAPTURES):
        result = compare(path, server, f"c{i}")
        alerts += len(result.alerts)
        flows += len(result.flow_log)
    assert alerts > 100 and flows > 300  # the comparison covered real alerts and flows


@pytest.mark.slow
def test_bench_capture_same_alerts_and_flows_for_1_2_3_decoders(server):
    result = compare(BENCH_PCAP, server, "bench", runs=((1, 0), (2, 1), (3, 2)))
    assert len(result.alerts) > 900 and len(result.flow_log) > 10_000
