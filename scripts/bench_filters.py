"""`pktscope read -Y F` against `tshark -r ... -Y F` on one capture: wall time, same output kind.

    .venv/bin/python -m scripts.bench_filters [CAPTURE] [--runs 3] [--filter F ...]

Both print one summary line per matching packet to /dev/null; the two take turns run by run
(this machine's speed drifts within minutes) and each filter's ratio is of the two medians.
The default filters are those of docs/benchmarks.md ("Display filters vs tshark").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"
FILTERS = [
    "tls.handshake.extensions_server_name or http.host",
    "tcp.flags.syn == 1 and tcp.flags.ack == 0",
    "ip.addr == 10.0.0.0/8 and tcp.port in {80, 443, 8000..8999}",
    'dns.qry.name contains "google"',
    "tls.handshake.type == 1",
    "http.request",
    'frame contains "GET"',
    "tcp.srcport > tcp.dstport",
]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("capture", nargs="?", default=str(DEFAULT_CAPTURE))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--filter", action="append", dest="filters")
    args = p.parse_args(argv)
    with open("/proc/loadavg") as f:
        print(f"capture {args.capture}, median of {args.runs}, load before {f.read().split()[0]}")
    print(f"{'pktscope':>9} {'tshark':>8} {'ratio':>6}  filter")
    worst = None
    for flt in args.filters or FILTERS:
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(timed([sys.executable, "-m", "services.cli.main", "read", args.capture, "-Y", flt]))
            theirs.append(timed(["tshark", "-n", "-r", args.capture, "-Y", flt]))
        a, b = statistics.median(ours), statistics.median(theirs)
        worst = b / a if worst is None else min(worst, b / a)
        print(f"{a:8.2f}s {b:7.2f}s {b / a:6.1f}  {flt}", flush=True)
    with open("/proc/loadavg") as f:
        print(f"lowest ratio {worst:.1f}; load after {f.read().split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
