"""Cost of AppInspector on the bench capture: only the inspect() calls, over pre-parsed packets."""

from __future__ import annotations

import time

import pytest

from services.decoder.app import AppInspector
from services.decoder.fastpath import decode_batch
from tests.conftest import BENCH_PCAP
from tests.test_app_inspector_corpus import read_packets

MIN_PACKETS_PER_SECOND = 250_000  # capture packets per second of inspect() time; measured ~1M


class _Recorder:
    """Stands in for the inspector during the L2-L4 pass so that only the calls are kept."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inspect(self, *args):
        self.calls.append(args)

    def expire(self, ts: float) -> None:
        return None


@pytest.mark.slow
def test_inspect_throughput_on_bench_capture():
    packets = read_packets(BENCH_PCAP)
    recorder = _Recorder()
    for i in range(0, len(packets), 256):
        decode_batch(packets[i : i + 256], recorder)
    calls = recorder.calls
    best = float("inf")
    for _ in range(2):
        insp = AppInspector()
        inspect = insp.inspect
        start = time.perf_counter()
        for i, call in enumerate(calls):
            inspect(*call)
            if i & 255 == 255:
                insp.expire(call[0])
        best = min(best, time.perf_counter() - start)
    rate = len(packets) / best
    print(f"\n{len(packets)} packets, {len(calls)} inspect calls in {best:.3f}s: {rate:,.0f} packets/s")
    assert insp.counters["app_exceptions"] == 0
    assert rate > MIN_PACKETS_PER_SECOND
