"""The flow table alone on the 183k-packet bench capture: every record and flow accounted.

Speed is measured by scripts/bench_stages.py, not here (no timed tests)."""

from __future__ import annotations

import pcap
import pytest

from services.decoder.fastpath import decode_batch
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.table import FlowTable
from shared.localnet import LocalNets
from tests.conftest import BENCH_PCAP


def table_pass(batches: list[list[tuple]]) -> tuple[FlowTable, int]:
    table = FlowTable(is_local=LocalMatcher(LocalNets().networks))
    events = 0
    for batch in batches:  # what the service does per RECORDS frame (one decoder: watermark = last ts)
        table.add(batch)
        table.advance(batch[-1][1])
        events += len(table.take())
    table.finish("eos", batches[-1][-1][1])
    events += len(table.take())
    return table, events


@pytest.mark.slow
def test_table_accounts_every_record_and_flow_of_the_bench_capture():
    packets = [(n, ts, 1, len(d), bytes(d)) for n, (ts, d) in enumerate(pcap.pcap(str(BENCH_PCAP)), 1)]
    batches = [decode_batch(packets[i : i + 256]).records for i in range(0, len(packets), 256)]
    del packets
    records = sum(map(len, batches))
    table, events = table_pass(batches)
    assert table.records == records > 180_000 and table.bad_records == 0
    assert table.flows_started == table.flows_ended > 10_000
    assert events >= 2 * table.flows_started  # a start and an end per flow, updates besides
