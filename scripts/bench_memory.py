"""Memory benchmark (not a test): what the bounded tables cost when they are full.

Fills, in this process, the flow-tracker's flow table with N distinct TCP flows (records as
the decoders send them, events released as the service releases them) and the DNS name cache
with its maximum of addresses, and reports the growth of the peak RSS per entry. These are the
tables attacker-controlled traffic can fill; their caps (``FlowSettings.max_flows``,
``DnsNames.max_addresses``) bound the flow-tracker's memory. Usage:

    .venv/bin/python -m scripts.bench_memory [--flows 500000] [--dns 65536]

Each measurement runs in a fresh child process, so one table's peak does not hide another's.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys

from services.flowtracker.names import DnsNames
from services.flowtracker.table import FlowTable
from shared.config import FlowSettings

BATCH = 512


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill_flow_table(n: int, reorder_window: float = 0.0) -> dict:
    """The table's own cost per flow. Events wait ``reorder_window`` seconds of packet time
    before they leave (10 s by default, issue 8); this fill puts 100,000 flows in one second of
    packet time, so with the window every start event would still be waiting and be measured
    too (1,420 instead of 968 bytes a flow at 500,000): ``--reorder-window`` measures that."""
    table = FlowTable(FlowSettings(max_flows=n, reorder_window=reorder_window))
    base = _peak_mb()
    batch: list[tuple] = []
    for i in range(n):
        src = struct.pack("!I", 0x0A000000 + i)
        dst = struct.pack("!I", 0xC0000200 + i % 250)
        batch.append((i, 1.0 + i * 1e-5, 60, 6, src, dst, 40000 + i % 20000, 443, 2, 0, 0, 0, None))
        if len(batch) == BATCH:
            table.add(batch)
            table.advance(batch[-1][1])
            table.take_rows()
            batch = []
    table.add(batch)
    grown = _peak_mb() - base
    return {"table": "flow table", "entries": len(table), "mb": grown, "bytes_each": grown * 2**20 / n}


def fill_dns_names(n: int) -> dict:
    names = DnsNames(max_addresses=n)
    base = _peak_mb()
    for i in range(n):
        addr = f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        name = f"host-{i}.cdn-{i % 977}.example.com"
        names.learn({"dns.queries": [[name, "A"]], "dns.answers": [[name, "A", 300, addr]]}, 1.0 + i)
    grown = _peak_mb() - base
    return {"table": "DNS names", "entries": len(names), "mb": grown, "bytes_each": grown * 2**20 / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_memory", description=__doc__)
    ap.add_argument("--flows", type=int, default=FlowSettings().max_flows)
    ap.add_argument("--dns", type=int, default=DnsNames().max_addresses)
    ap.add_argument(
        "--max-bytes-per-flow",
        type=float,
        default=0,
        help="exit 1 when a flow costs more than this at the cap (issue 10's bound: 1024)",
    )
    ap.add_argument(
        "--reorder-window", type=float, default=0.0, help="seconds events wait in the table (default 0)"
    )
    ap.add_argument("--child", choices=("flows", "dns"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = (
            fill_flow_table(args.flows, args.reorder_window)
            if args.child == "flows"
            else fill_dns_names(args.dns)
        )
        print(json.dumps(result))
        return 0
    over = False
    for what in ("flows", "dns"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.bench_memory",
                "--child",
                what,
                "--flows",
                str(args.flows),
                "--dns",
                str(args.dns),
                "--reorder-window",
                str(args.reorder_window),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        print(
            f"{r['table']:10} {r['entries']:>9,} entries: +{r['mb']:.0f} MB peak RSS = {r['bytes_each']:,.0f} bytes each"
        )
        if what == "flows" and args.max_bytes_per_flow and r["bytes_each"] > args.max_bytes_per_flow:
            print(f"flow table: {r['bytes_each']:,.0f} bytes per flow, over {args.max_bytes_per_flow:,.0f}")
            over = True
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
