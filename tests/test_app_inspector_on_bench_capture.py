"""AppInspector over every inspect() call of the bench capture: no exception escapes.

Its speed is measured by scripts/bench_stages.py, not here (no timed tests)."""

from __future__ import annotations

import pytest

from services.decoder.app import AppInspector
from services.decoder.fastpath import decode_batch
from tests.conftest import BENCH_PCAP
from tests.test_app_inspector_corpus import read_packets


class _Recorder:
    """Stands in for the inspector during the L2-L4 pass so that only the calls are kept."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inspect(self, *args):
        self.calls.append(args)

    def expire(self, ts: float) -> None:
        return None


@pytest.mark.slow
def test_inspect_every_call_of_the_bench_capture_without_an_exception():
    packets = read_packets(BENCH_PCAP)
    recorder = _Recorder()
    for i in range(0, len(packets), 256):
        decode_batch(packets[i : i + 256], recorder)
    calls = recorder.calls
    insp = AppInspector()
    found = 0
    for i, call in enumerate(calls):
        found += insp.inspect(*call) is not None
        if i & 255 == 255:
            insp.expire(call[0])
    assert len(calls) > 60_000
    assert insp.counters["app_exceptions"] == 0
    assert found > 1_000  # names, fingerprints, HTTP fields found along the way
