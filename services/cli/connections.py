"""`pktscope connections`: what each program talked to (first/last seen, flows, bytes up and down)."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime

import redis

from services.cli.common import CliError, add_common, resolve_redis
from services.cli.text import safe as escape
from services.detector import connections
from shared.redis_conn import connect

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "connections",
        help="what each program talked to: destinations, first/last seen, flows, bytes",
        description="Connection history per (process, destination label), kept bounded in Redis by "
        "the detector. Bytes count whole packets as captured (link layer included).",
    )
    add_common(p)
    p.add_argument("--process", metavar="EXE", help="only this program (full path or base name)")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only pairs seen since: a duration ago (90s, 10m, 2h, 1d) or a date (2026-05-01 or 2026-05-01T12:00)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many rows (default 10000)")
    p.set_defaults(func=run)


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from "10m"/"2h"/... ago, a date, or epoch seconds; CliError says how to write it."""
    now = time.time() if now is None else now
    m = _AGO.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise CliError(
            f"--since {text!r}: write a duration (90s, 10m, 2h, 1d, 1w) or a date (2026-05-01T12:00)"
        ) from None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be >= 1, got {args.limit}")
    since = parse_since(args.since) if args.since else None
    resolve_redis(args)
    r = connect(args.redis_url, cluster=args.redis_cluster)
    try:
        rows = connections.read(r, args.redis_prefix, since, args.process, args.limit)
    except redis.RedisError as exc:
        raise CliError(f"cannot reach Redis at {args.redis_url}: {exc} (is the pipeline running?)") from None
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, ensure_ascii=True))
        return 0
    if not rows:
        print("no connections recorded" + (" for that process" if args.process else ""))
        return 0
    print(
        f"{'process':40} {'destination':32} {'first seen':19} {'last seen':19} {'flows':>6} {'bytes up':>12} {'bytes down':>12}"
    )
    for row in rows:
        print(
            f"{escape(row['process'])[:40]:40} {escape(row['destination'])[:32]:32} {_when(row['first']):19} "
            f"{_when(row['last']):19} {row['flows']:>6} {row['bytes_out']:>12,} {row['bytes_in']:>12,}"
        )
    return 0
