"""Stage benchmark (not a test): each pipeline stage's work on a capture, in one process.

Runs what each service does per frame, in order, without sockets or process start-up, so
that one stage's cost can be seen and compared: packing and unpacking the frames that cross
each process boundary, the decoder's fast path with and without the application layers,
the flow table, and the detector's parsing of flow events. Times are CPU seconds
(``time.process_time``), median of ``--runs``; the garbage collector is tuned as the
services tune it (shared/service.py). Usage:

    .venv/bin/python -m scripts.bench_stages [CAPTURE] [--runs 3] [--batch 512] [--profile STAGE]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pcap

from services.decoder.fastpath import decode_batch
from services.decoder.service import load_app_inspector
from services.detector.events import inbound_time, parse
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.service import local_nets
from services.flowtracker.table import FlowTable
from shared import frames
from shared.config import PipelineConfig
from shared.service import tune_gc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"


def read_packets(path: Path) -> list[tuple]:
    pc = pcap.pcap(str(path), timestamp_in_ns=False)
    lt = pc.datalink()
    return [(i, ts, lt, len(d), bytes(d)) for i, (ts, d) in enumerate(pc, 1)]


def run_table(record_frames: list[tuple]) -> list[list]:
    return [row for rows in table_frames(record_frames) for row in rows]


def table_frames(record_frames: list[tuple]) -> list[list[list]]:
    """The flow table's event rows after each records frame (the last list: its end of stream)."""
    cfg = PipelineConfig()
    table = FlowTable(cfg.flow, LocalMatcher(local_nets(cfg).networks))
    out: list[list[list]] = []
    for body in record_frames:
        table.add(body)
        if body:
            table.advance(body[-1][1])
        out.append(table.take_rows())
    table.finish("eos", float("inf"))
    out.append(table.take_rows())
    return out


def stages(packets: list[tuple], batch: int) -> list[tuple[str, Callable[[dict], object]]]:
    """(name, function of the shared state) in pipeline order; each stores what the next needs."""

    def pack_packets(s: dict) -> None:
        s["pkt_bufs"] = [
            frames.encode(frames.FrameType.PACKETS, "capture", i, packets[o : o + batch])
            for i, o in enumerate(range(0, len(packets), batch))
        ]

    def unpack_packets(s: dict) -> None:
        s["pkt_bodies"] = [frames.decode(b).body for b in s["pkt_bufs"]]

    def fastpath(s: dict) -> None:
        for body in s["pkt_bodies"]:
            decode_batch(body, None)

    def fastpath_app(s: dict) -> None:
        app = load_app_inspector()
        s["records"] = [decode_batch(body, app).records for body in s["pkt_bodies"]]

    def pack_records(s: dict) -> None:
        s["rec_bufs"] = [
            frames.encode(frames.FrameType.RECORDS, "decoder-0", i, r) for i, r in enumerate(s["records"])
        ]

    def unpack_records(s: dict) -> None:
        s["rec_bodies"] = [frames.decode(b).body for b in s["rec_bufs"]]

    def flow_table(s: dict) -> None:
        s["events"] = run_table(s["rec_bodies"])

    def pack_events(s: dict) -> None:
        ev = s["events"]
        s["ev_bufs"] = [
            frames.encode(frames.FrameType.FLOWS, "flowtracker", i, ev[o : o + batch])
            for i, o in enumerate(range(0, len(ev), batch))
        ]

    def unpack_parse_events(s: dict) -> None:
        for b in s["ev_bufs"]:
            for row in frames.decode(b).body:
                if inbound_time(row) is None:  # as the engine does: inbound events are skipped
                    parse(row)

    return [
        ("capture: pack packet frames", pack_packets),
        ("decoder: unpack packet frames", unpack_packets),
        ("decoder: fast path, no app layers", fastpath),
        ("decoder: fast path + app layers", fastpath_app),
        ("decoder: pack record frames", pack_records),
        ("flowtracker: unpack record frames", unpack_records),
        ("flowtracker: flow table", flow_table),
        ("flowtracker: pack event frames", pack_events),
        ("detector: unpack + parse events", unpack_parse_events),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_stages", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    ap.add_argument("--profile", metavar="STAGE", help="cProfile the stage whose name contains STAGE")
    args = ap.parse_args(argv)

    packets = read_packets(args.capture)
    tune_gc()
    plan = stages(packets, args.batch)
    times: dict[str, list[float]] = {name: [] for name, _ in plan}
    for _ in range(args.runs):
        state: dict = {}
        for name, fn in plan:
            t = time.process_time()
            fn(state)
            times[name].append(time.process_time() - t)
    n = len(packets)
    print(f"{args.capture} ({n:,} packets), frames of {args.batch}, median of {args.runs} (CPU seconds)")
    for name, ts in times.items():
        sec = statistics.median(ts)
        print(f"  {name:36} {sec:6.3f} s = {n / sec:>10,.0f} packets/s")
    print(f"  flow events: {len(state['events']):,}")
    if args.profile:
        name, fn = next((s for s in plan if args.profile in s[0]), (None, None))
        if fn is None:
            raise SystemExit(f"no stage named like {args.profile!r}")
        prof = cProfile.Profile()
        prof.runcall(fn, state)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
