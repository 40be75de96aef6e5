"""Flow-tracker benchmark (not a test): its two per-record stages in one process, as the service
runs them on packed RECORDS bodies.

* the flow table: each body's records by reference (``packed_records.refs_of``), the table's
  per-record loop (``packed_records.add_records``), its timers up to the body's last packet time
  (``advance``), and the events packed as FLOWS rows (``shared/flow_rows.pack_rows``);
* the capture-order merge of two decoders (``CaptureOrderMerge``): the records split by packet
  number parity into two inputs, added a body of each at a time and released.

The bodies come from the capture through the decoder's ``decode_packed`` (app layers on), made
before timing. CPU seconds (``time.process_time``), best of ``--runs``; whether the compiled
twins run is printed. Usage:

    .venv/bin/python -m scripts.bench_flowtracker [CAPTURE] [--runs 5] [--batch 512]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scripts.bench_stages import DEFAULT_CAPTURE, read_packets
from services.decoder.packed_batch import decode_packed
from services.decoder.service import load_app_inspector
from services.flowtracker import packed_records
from services.flowtracker.merge import CaptureOrderMerge
from services.flowtracker.table import FlowTable
from shared import compiled, packed
from shared.flow_rows import pack_rows
from shared.service import tune_gc


def record_bodies(packets: list[tuple], batch: int) -> list:
    """The packets' RECORDS bodies, one per ``batch`` packets, as a decoder makes them."""
    app = load_app_inspector()
    return [decode_packed(packed.pack_packets(packets[i : i + batch]), app).body for i in range(0, len(packets), batch)]


def table_once(bodies: list) -> float:
    table = FlowTable()
    t = time.process_time()
    for body in bodies:
        refs = packed_records.refs_of(body)
        packed_records.add_records(table, refs)
        if refs:
            table.advance(refs[-1][1])
        rows = table.take_rows()
        if rows:
            pack_rows(rows)
    table.finish("eos", 2e9)
    pack_rows(table.take_rows())
    return time.process_time() - t


def merge_once(inputs: list[tuple[list, list]]) -> float:
    merge = CaptureOrderMerge(2)
    t = time.process_time()
    for first, second in inputs:
        merge.add("decoder-0", first)
        merge.add("decoder-1", second)
        merge.release()
    merge.finish("decoder-0")
    merge.finish("decoder-1")
    merge.release()
    return time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_flowtracker", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    args = ap.parse_args(argv)

    packets = read_packets(args.capture)
    bodies = record_bodies(packets, args.batch)
    halves = [record_bodies([p for p in packets if p[0] % 2 == k], args.batch) for k in (0, 1)]
    inputs = [
        (packed_records.refs_of(a), packed_records.refs_of(b)) for a, b in zip(halves[0], halves[1], strict=False)
    ]
    del packets
    tune_gc()
    table = min(table_once(bodies) for _ in range(args.runs))
    merge = min(merge_once(inputs) for _ in range(args.runs))
    records = sum(len(a) + len(b) for a, b in inputs)
    print(f"{args.capture.name}: frames of {args.batch}, best of {args.runs} (CPU seconds); {compiled.summary()}")
    print(f"  flow table (refs, loop, timers, rows packed)  {table:6.3f} s")
    print(f"  capture-order merge, two inputs ({records:,} records)  {merge:6.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
