"""Decoder benchmark (not a test): the fast path with and without the app layers, and the
service's own path (``decode_packed``: packed packets in, packed records out, app layers on), as
the decoder service runs it — each batch's records dropped once made, a fresh app inspector per run.

scripts/bench_stages.py keeps every record of a run alive for the next stage, which makes the
collector's passes grow with the run; this does not. CPU seconds (``time.process_time``), median
of ``--runs``, runs alternating the two modes. Usage:

    .venv/bin/python -m scripts.bench_decoder [CAPTURE] [--runs 5] [--batch 512]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from scripts.bench_stages import DEFAULT_CAPTURE, read_packets
from services.decoder.fastpath import decode_batch
from services.decoder.packed_batch import decode_packed
from services.decoder.service import load_app_inspector
from shared import compiled, packed
from shared.service import tune_gc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_decoder", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    args = ap.parse_args(argv)

    packets = read_packets(args.capture)
    bodies = [packets[o : o + args.batch] for o in range(0, len(packets), args.batch)]
    packed_bodies = [packed.packets_body(batch) for batch in bodies]
    tune_gc()
    bare: list[float] = []
    full: list[float] = []
    served: list[float] = []
    for _ in range(args.runs):
        t = time.process_time()
        for body in bodies:
            decode_batch(body, None)
        bare.append(time.process_time() - t)
        app = load_app_inspector()
        t = time.process_time()
        for body in bodies:
            decode_batch(body, app)
        full.append(time.process_time() - t)
        app = load_app_inspector()
        t = time.process_time()
        for body in packed_bodies:
            decode_packed(body, app)
        served.append(time.process_time() - t)
    n = len(packets)
    a, b, c = statistics.median(bare), statistics.median(full), statistics.median(served)
    print(f"{args.capture} ({n:,} packets), frames of {args.batch}, median of {args.runs} (CPU seconds)")
    print(f"  hot path: {compiled.summary()}")
    print(f"  fast path, no app layers   {a:6.3f} s = {a / n * 1e6:5.2f} us/packet")
    print(f"  fast path + app layers     {b:6.3f} s = {b / n * 1e6:5.2f} us/packet")
    print(f"  app layers (difference)    {b - a:6.3f} s")
    print(f"  decode_packed (service)    {c:6.3f} s = {c / n * 1e6:5.2f} us/packet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
