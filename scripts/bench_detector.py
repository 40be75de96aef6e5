"""Detector benchmark (not a test): the detector engine fed a capture's flow events, in one process,
against a private redis-server, with a frame's script calls as one dispatcher call and as one
EVALSHA each (services/detector/script_batch.py), taking turns.

The flow events come from the capture through the decoder's fast path and the flow table, as in
scripts/bench_stages.py, framed as the flow-tracker frames them (one frame per records frame).
Prints, per way, the engine's CPU seconds (``time.process_time``) and redis-server's (its
user+sys), medians of ``--runs``, with a learning window of 0 (every new destination alerts, as
``scripts/bench`` runs). Usage:

    .venv/bin/python -m scripts.bench_detector [CAPTURE] [--runs 5] [--batch 512]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import redis

from scripts.bench_stages import DEFAULT_CAPTURE, read_packets, table_frames
from services.decoder.fastpath import decode_batch
from services.decoder.service import load_app_inspector
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from shared import frames
from shared.config import PipelineConfig
from shared.redis_conn import connect
from shared.redis_server import start_redis_server
from shared.service import tune_gc


def event_frames(capture: Path, batch: int) -> list[bytes]:
    """The capture's flow events as FLOWS frames, one per frame of ``batch`` packets."""
    packets = read_packets(capture)
    app = load_app_inspector()
    records = [decode_batch(packets[i : i + batch], app).records for i in range(0, len(packets), batch)]
    return [
        frames.encode(frames.FrameType.FLOWS, "flowtracker", n, rows)
        for n, rows in enumerate(rows for rows in table_frames(records) if rows)
    ]


def one_run(r: redis.Redis, server: psutil.Process, bufs: list[bytes], batch_scripts: bool) -> tuple[float, float, int]:
    """(engine CPU s, redis-server CPU s, alerts) of the whole stream on an empty Redis."""
    r.flushall()
    cfg = PipelineConfig(redis_prefix="bench", run_id="bench")
    cfg.detector.learning = 0
    cfg.detector.attribute_processes = False
    engine = DetectorEngine(r, cfg, enrichers=Enrichers(), batch_scripts=batch_scripts)
    before = server.cpu_times()
    t = time.process_time()
    alerts = 0
    for buf in bufs:
        alerts += len(engine.process(frames.decode(buf).body))
    alerts += len(engine.finish())
    cpu = time.process_time() - t
    after = server.cpu_times()
    return cpu, (after.user + after.system) - (before.user + before.system), alerts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_detector", description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    args = ap.parse_args(argv)
    bufs = event_frames(args.capture, args.batch)
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="pkb-det-") as tmp:
        proc, url = start_redis_server(Path(tmp) / "r.sock", Path(tmp))
        try:
            r = connect(url)  # as the detector connects: its command packer (shared/resp_packer.py)
            server = psutil.Process(proc.pid)
            results: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
            for _ in range(args.runs):
                for way in (False, True):
                    results[way].append(one_run(r, server, bufs, way))
        finally:
            proc.terminate()
            proc.wait()
    print(f"{args.capture.name}: {len(bufs)} event frames, median of {args.runs}, taking turns")
    for way, label in ((False, "one EVALSHA per call"), (True, "one dispatcher call per frame")):
        runs = results[way]
        print(
            f"  {label:30s} engine {statistics.median(x[0] for x in runs):.3f} CPU s, "
            f"redis-server {statistics.median(x[1] for x in runs):.3f} CPU s, alerts {runs[0][2]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
