"""`pktscope inspect`: a terminal UI on a running pipeline, or one JSON snapshot (`--json`)."""

from __future__ import annotations

import argparse
import json

import redis

from services.cli.common import CliError, add_common, resolve_redis
from shared.redis_conn import connect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="terminal UI: live connections, per-process/destination breakdowns, alerts, history",
        description="Watch a running pipeline: live connections, breakdowns per process and destination, "
        "the alert feed (s: mark seen, a: allow into the baseline), what a program talked to in a "
        "time window, and a display-filter box (/). --json prints one snapshot instead.",
    )
    add_common(p)
    p.add_argument(
        "--json", action="store_true", help="print one snapshot (status, connections, alerts) as JSON"
    )
    p.add_argument("--count", type=int, default=100, help="with --json: newest alerts included (default 100)")
    p.add_argument(
        "--filter", default="", help="with --json: only connections and alerts matching this display filter"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.cli.inspect_data import InspectError, InspectSource, alert_fields, conn_fields, make_filter

    resolve_redis(args)
    run_id = (
        args.pipeline.run_id
        if args.pipeline is not None and args.redis_url == args.pipeline.effective_redis_url
        else None
    )
    source = InspectSource(connect(args.redis_url, cluster=args.redis_cluster), args.redis_prefix, run_id)
    try:
        predicate = make_filter(args.filter)
    except InspectError as exc:
        raise CliError(f"--filter: {exc}") from None
    if args.json:
        try:
            snap = source.snapshot(max(0, args.count))
        except redis.RedisError as exc:
            raise CliError(
                f"cannot reach Redis at {args.redis_url}: {exc} (is the pipeline running?)"
            ) from None
        snap["connections"] = [c for c in snap["connections"] if predicate(conn_fields(c))]
        snap["alerts"] = [a for a in snap["alerts"] if predicate(alert_fields(a))]
        print(json.dumps(snap, sort_keys=True, ensure_ascii=True))
        return 0
    try:
        source.r.ping()
    except redis.RedisError as exc:
        raise CliError(f"cannot reach Redis at {args.redis_url}: {exc} (is the pipeline running?)") from None
    from services.cli.inspect_app import InspectApp

    InspectApp(source).run()
    return 0
