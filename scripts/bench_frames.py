"""Frame bodies benchmark (not a test): packets and records through a frame, as msgpack lists and
as the packed layouts (shared/packed.py), pure and compiled; and the capture's flow events
through FLOWS frames: packed by msgpack or by shared/flow_rows.py (what frames.encode uses), read
by the detector (decoded then events.scan, or in place: flows_skim.scan) and by the observer
(decoded, or in place: flows_skim.live_rows).

Each batch's output is dropped once made, as the services do (keeping every tuple alive makes
the collector's passes grow with the run and triples the unpacking figures). CPU seconds
(``time.process_time``) per packet, best of ``--runs``. Usage:

    .venv/bin/python -m scripts.bench_frames [CAPTURE] [--runs 5] [--batch 512]
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from scripts.bench_stages import DEFAULT_CAPTURE, read_packets, table_frames
from services.decoder.app.inspector import AppInspector
from services.decoder.fastpath import decode_batch
from services.detector import flows_skim
from services.detector.events import scan
from shared import compiled, frames
from shared.service import tune_gc


def _time(batches: list, ftype: str, pack: Callable, unpack: Callable) -> tuple[float, float]:
    t = time.process_time()
    bufs = [frames.encode(ftype, "sender-0", i, pack(b)) for i, b in enumerate(batches)]
    packed = time.process_time() - t
    t = time.process_time()
    for buf in bufs:
        unpack(frames.decode(buf).body)
    return packed, time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_frames", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    args = ap.parse_args(argv)
    tune_gc()
    packets = read_packets(args.capture)
    n = len(packets)
    pkt_batches = [packets[i : i + args.batch] for i in range(0, n, args.batch)]
    app = AppInspector()
    rec_batches = [decode_batch(b, app).records for b in pkt_batches]
    kinds = {
        "packets": (frames.FrameType.PACKETS, pkt_batches, "pack_packets", "unpack_packets"),
        "records": (frames.FrameType.RECORDS, rec_batches, "pack_records", "unpack_records"),
    }
    pure = compiled.pure_module("shared.packed")
    twin = None
    if not compiled.forced_pure():
        try:
            twin = importlib.import_module("shared._packed_c")
        except ImportError:
            print("  (shared._packed_c not built: run scripts/setup)")
    print(f"{args.capture} ({n:,} packets), frames of {args.batch}, best of {args.runs}, us per packet")
    for kind, (ftype, batches, pack_name, unpack_name) in kinds.items():
        impls = {"msgpack list": (lambda b: b, lambda body: body)}
        impls["packed, pure"] = (getattr(pure, pack_name), getattr(pure, unpack_name))
        if twin is not None:
            impls["packed, compiled"] = (getattr(twin, pack_name), getattr(twin, unpack_name))
        for label, (pack, unpack) in impls.items():
            best = [min(x) for x in zip(*(_time(batches, ftype, pack, unpack) for _ in range(args.runs)), strict=True)]
            print(f"  {kind:8s} {label:17s} pack {best[0] * 1e6 / n:6.3f}   unpack {best[1] * 1e6 / n:6.3f}")
    flows(rec_batches, args.runs)
    return 0


def flows(rec_batches: list, runs: int) -> None:
    """The capture's flow events through FLOWS frames, each way the services pack and read them."""
    bodies = [rows for rows in table_frames(rec_batches) if rows]
    n = sum(len(rows) for rows in bodies)
    packer = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    bufs = [frames.encode(frames.FrameType.FLOWS, "flowtracker", i, rows) for i, rows in enumerate(bodies)]
    ways = {
        "pack: msgpack": lambda: [packer((frames.FrameType.FLOWS, frames.FRAME_VERSION, "ft", i, rows)) for i, rows in enumerate(bodies)],
        "pack: frames.encode (flow_rows)": lambda: [frames.encode(frames.FrameType.FLOWS, "ft", i, rows) for i, rows in enumerate(bodies)],
        "detector: decode + events.scan": lambda: [scan(frames.decode(b).body, 0.0) for b in bufs],
        "detector: flows_skim.scan": lambda: [flows_skim.scan(b, 0.0) for b in bufs],
        "observer: decode": lambda: [frames.decode(b) for b in bufs],
        "observer: flows_skim.live_rows": lambda: [flows_skim.live_rows(b) for b in bufs],
    }  # fmt: skip
    print(f"flow events: {n:,} in {len(bufs)} FLOWS frames, best of {runs}, us per event")
    for label, way in ways.items():
        best = float("inf")
        for _ in range(runs):
            t = time.process_time()
            way()
            best = min(best, time.process_time() - t)
        print(f"  {label:34s} {best * 1e6 / n:6.3f}  ({best:.3f} CPU s)")


if __name__ == "__main__":
    raise SystemExit(main())
