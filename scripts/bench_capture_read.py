"""Benchmark (not a test): how many packets a second one offline capture process hands out.

What `run_offline` (services/capture/service.py) does per packet, in this process, through the
dealer it picks (services/capture/replay.py): a classic pcap file mapped and each record copied
into its decoder's packed body (pcap_deal.py), else (or with ``--general``) the file read into
tuples (``OfflineSource.records``: pcapfile.py), hashed and sharded (sharding.py) and packed per
batch; per full batch the frame is encoded and sent over ZeroMQ ipc to a PULL socket per
decoder, drained by a child process that only receives. Issue 15 keeps one reader
for replays while this is over 1M packets/s. Printed: packets per CPU second of this process
(what a core can read) and per wall second, median of ``--runs``; compiled or pure as built
(PKTSCOPE_PURE=1 for the reference). Usage:

    .venv/bin/python -m scripts.bench_capture_read [CAPTURE] [--decoders 2] [--runs 5] [--batch 512] [--general]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from services.capture import pcapfile, sharding
from services.capture.replay import ListDealer, dealer_for, drain
from services.capture.sources import OfflineSource
from shared.frames import FrameType, encode
from shared.service import tune_gc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"

DRAIN = r"""
import sys, zmq
ctx = zmq.Context()
socks = [ctx.socket(zmq.PULL) for _ in sys.argv[1:]]
poller = zmq.Poller()
for s, ep in zip(socks, sys.argv[1:]):
    s.bind(ep)
    poller.register(s, zmq.POLLIN)
print("ready", flush=True)
while True:
    for s, _ in poller.poll():
        if s.recv() == b"stop":
            sys.exit(0)
"""


def read_once(path: Path, socks: list, bsize: int, general: bool) -> tuple[int, float, float, str]:
    """One pass as run_offline makes it; (packets, CPU s, wall s, dealer)."""
    n = len(socks)
    seq = [0] * n
    cpu, wall = time.process_time(), time.perf_counter()
    source = OfflineSource(str(path))
    dealer = ListDealer(source, n, bsize) if general else dealer_for(source, n, bsize)
    num = 0
    for i, body, count in drain(dealer, n):  # as run_offline, without its ticks
        socks[i].send(encode(FrameType.PACKETS, "capture", seq[i], body))
        seq[i] += 1
        num += count
    dealer.close()
    return num, time.process_time() - cpu, time.perf_counter() - wall, type(dealer).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_capture_read", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--general", action="store_true", help="the tuple path, as for pcapng or a pure build")
    args = ap.parse_args(argv)
    tune_gc()
    tmp = Path(tempfile.mkdtemp(prefix="pkr-", dir="/tmp"))
    endpoints = [f"ipc://{tmp}/d{i}.ipc" for i in range(args.decoders)]
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, *endpoints], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        assert drain.stdout is not None and drain.stdout.readline().strip() == "ready"
        socks = []
        for ep in endpoints:
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 200)
            s.connect(ep)
            socks.append(s)
        results = [read_once(args.capture, socks, args.batch, args.general) for _ in range(args.runs)]
        for s in socks:
            s.send(b"stop")
            s.close(linger=2000)
    finally:
        ctx.term()
        drain.wait(timeout=10)
    n = results[0][0]
    cpu = statistics.median(r[1] for r in results)
    wall = statistics.median(r[2] for r in results)
    path = "compiled" if sharding.COMPILED and pcapfile.COMPILED else "pure"
    print(
        f"{args.capture.name}: {n:,} packets, {args.decoders} decoders, frames of {args.batch}, {path}, "
        f"{results[0][3]}, "
        f"median of {args.runs}: read+hash+shard+send {cpu:.3f} CPU s = {n / cpu:,.0f} packets per CPU second "
        f"({wall:.3f} s wall = {n / wall:,.0f}/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
