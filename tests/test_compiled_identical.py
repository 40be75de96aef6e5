"""The compiled hot modules (Cython twins, scripts/build_compiled.py) and the pure-Python reference
give identical output on every corpus capture and the bench capture: capture's shard of every
packet, the decoders' records, every flow event and every alert.

Both paths run in this one process (tests/inprocess_pipeline.py): the public names are the
compiled twins, ``pure_impl()`` separate pure copies of the same files. scripts/test runs
scripts/setup first, which builds the twins, so a missing or stale build fails here rather than
passing by comparing pure Python with itself; PKTSCOPE_PURE=1 (everything pure) skips.
"""

from __future__ import annotations

import pytest
import redis

from shared import compiled
from tests import inprocess_pipeline
from tests.conftest import BENCH_PCAP, PCAPS, start_redis
from tests.test_pipeline_differential import essence

CAPTURES = sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))

pytestmark = pytest.mark.skipif(compiled.forced_pure(), reason="PKTSCOPE_PURE=1: no compiled path to compare")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_redis(tmp_path_factory.mktemp("compiledredis"))
    r = redis.Redis.from_url(url, decode_responses=True)
    yield r
    r.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pure() -> inprocess_pipeline.Impl:
    impl = inprocess_pipeline.pure_impl()
    # the comparison means something only if the two sides really are different code
    assert compiled.all_compiled(), f"hot modules not compiled: {compiled.summary()} (run scripts/setup)"
    compiled_side = inprocess_pipeline.DEFAULT
    for fn in (compiled_side.make_sharder, compiled_side.decode_batch, compiled_side.flow_table):
        assert fn.__module__.endswith("_c"), fn  # the twin: services.decoder._fastpath_c, ...
    for fn in (impl.make_sharder, impl.decode_batch, impl.flow_table):
        assert fn.__module__.endswith("__pure"), fn
    return impl


def same(
    path, r: redis.Redis, tag: str, pure: inprocess_pipeline.Impl, decoders: int
) -> tuple[int, int, int]:
    """Run ``path`` both ways; assert every frame, record, event and alert is equal; return counts."""
    got = {}
    for impl in (inprocess_pipeline.DEFAULT, pure):
        got[impl.name] = inprocess_pipeline.run(
            str(path), r, f"{tag}-{impl.name}", decoders=decoders, seed=3, impl=impl, keep=True
        )
    a, b = got["default"], got["pure"]
    assert a.frames_in == b.frames_in, (path.name, "capture's shards and batches")
    assert a.frames_out == b.frames_out, (path.name, "decoder records")
    assert a.rows == b.rows, (path.name, "flow events")
    assert essence(a) == essence(b), (path.name, "alerts and flow log")
    records = sum(len(body) for frames in a.frames_out for kind, body in frames if kind == "recs")
    return records, len(a.rows), len(a.alerts)


def test_corpus_captures_identical_compiled_and_pure(server, pure):
    assert len(CAPTURES) >= 40
    records = rows = alerts = 0
    for i, path in enumerate(CAPTURES):
        n = same(path, server, f"cc{i}", pure, decoders=2)
        records, rows, alerts = records + n[0], rows + n[1], alerts + n[2]
    assert records > 1000 and rows > 300 and alerts > 100  # real records, events and alerts compared


def test_bench_capture_identical_compiled_and_pure(server, pure):
    records, rows, alerts = same(BENCH_PCAP, server, "ccbench", pure, decoders=2)
    assert records > 180_000 and rows > 30_000 and alerts > 900
