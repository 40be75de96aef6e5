"""`pktscope status`: every service of the pipeline, up or down, with its counters."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import redis

from services.cli import attribution_mode, pipeline_stats
from services.cli.common import CliError, add_common, resolve_redis
from services.detector import sensor_stats
from shared.redis_conn import connect
from shared.redis_keys import Keys

STALE_AFTER = 5.0  # seconds without a heartbeat before a service counts as down
SENSOR_STALE_AFTER = 10.0  # a sensor's stats arrive every 2 s (services/flowtracker/stats_relay.py)

# Columns: (heading, counter names summed into it)
COLUMNS = (
    ("frames in", ("frames_in",)),
    ("frames out", ("frames_out",)),
    # frames the sender numbered but this service never got (a gap in the sequence numbers,
    # e.g. those in flight when it was killed): loss on the way *into* this service
    ("frames lost", ("frames_lost",)),
    ("packets in", ("packets_in", "records_in", "events_in")),
    ("packets out", ("packets", "records_out", "events_out")),
    ("errors", ("malformed", "bad_frames", "app_errors", "redis_errors")),
    ("drops", ("dropped", "pcap_drop", "pcap_ifdrop", "evicted")),
)
WIDTH = 11  # of a counter column


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show each service: up or down, counters, heartbeat, learning")
    add_common(p)
    p.add_argument("--json", action="store_true", help="print the raw stats as JSON")
    p.add_argument("--all-runs", action="store_true", help="also show services of earlier runs")
    p.set_defaults(func=run)


def service_state(stats: dict, now: float) -> str:
    if stats.get("eos"):
        return "finished"
    age = now - float(stats.get("heartbeat", 0) or 0)
    return "up" if age <= STALE_AFTER else "down"


def run(args: argparse.Namespace) -> int:
    resolve_redis(args)
    r = connect(args.redis_url, cluster=args.redis_cluster)
    keys = Keys(args.redis_prefix)
    run_id = None if args.all_runs or args.pipeline is None else args.pipeline.run_id
    try:
        stats = pipeline_stats.read_all(r, keys, run_id)
        learning = r.hgetall(keys.learning())
        sensors = sensor_stats.read_all(r, keys.prefix)
    except redis.RedisError as exc:
        raise CliError(f"cannot reach Redis at {args.redis_url}: {exc} (is the pipeline running?)") from None
    now = time.time()
    if args.json:
        print(
            json.dumps(
                {"services": stats, "learning": learning, "sensors": sensors}, sort_keys=True, default=str
            )
        )
        return 0
    if not stats and not sensors:
        print("no services have reported yet")
        return 1
    head = f"{'service':14} {'state':9} " + " ".join(f"{h:>{WIDTH}}" for h, _ in COLUMNS) + "  heartbeat"
    print(head)
    for name, s in sorted(stats.items(), key=lambda kv: _order(kv[0])):
        cells = " ".join(f"{sum(int(s.get(c, 0) or 0) for c in cols):>{WIDTH},}" for _, cols in COLUMNS)
        age = now - float(s.get("heartbeat", 0) or 0)
        print(f"{name:14} {service_state(s, now):9} {cells}  {age:6.1f} s ago")
    _print_sensors(sensors, now)
    refused = pipeline_stats.combined(stats, "detector").get("auth_refused")
    if refused:
        print(
            f"pool: refused {int(refused):,} sensor connection(s) with unknown CURVE keys (see the detector logs)"
        )
    for name, count in pipeline_stats.restarts(stats).items():
        print(f"{name}: restarted {count} time(s) in this run (pid now {stats[name].get('pid', '?')})")
    det = pipeline_stats.combined(stats, "detector")
    if learning or "learning" in det:
        end = learning.get("end")
        state = "learning" if int(det.get("learning", 0) or 0) else "detecting"
        extra = f" (learning window ends {_packet_time(float(end))})" if end else ""
        print(f"baseline: {state}{extra}")
    lost = pipeline_stats.losses(stats)
    if any(lost.values()):
        print("LOST: " + pipeline_stats.format_losses(lost))
    out = pipeline_stats.outages(stats)
    if out:
        print("redis outages seen: " + pipeline_stats.format_outages(out))
    if det.get("late_events") or det.get("volume_behind"):
        print(
            f"detector: {int(det.get('late_events', 0) or 0):,} late events, "
            f"{int(det.get('volume_behind', 0) or 0):,} volume counts behind their entity's open interval"
        )
    mode = attribution_mode.from_stats(stats, args.pipeline.live if args.pipeline is not None else None)
    if mode:
        print(f"attribution: {mode}")
    notifier = stats.get("notifier")
    if notifier:
        print(
            f"notifier: {int(notifier.get('notifications_sent', 0)):,} notifications "
            f"({int(notifier.get('alerts_delivered', 0)):,} alerts) delivered, "
            f"{int(notifier.get('delivery_failures', 0)):,} delivery failures, "
            f"{int(notifier.get('alerts_pending', 0)):,} pending"
        )
    app = _app_problems(stats)
    if app:
        print("application layers: " + ", ".join(f"{k} {v:,}" for k, v in app))
    return 0


def _print_sensors(sensors: dict[str, dict[str, dict[str, str]]], now: float) -> None:
    """A detector pool: every sensor's instances, as they last reported (sensor_stats.py)."""
    for sensor in sorted(sensors):
        for name, raw in sorted(sensors[sensor].items(), key=lambda kv: _order(kv[0])):
            s = {k: pipeline_stats._typed(v) for k, v in raw.items()}
            cells = " ".join(f"{sum(_int(s.get(c)) for c in cols):>{WIDTH},}" for _, cols in COLUMNS)
            age = now - float(s.get("relayed_at", 0) or 0)
            state = "finished" if s.get("eos") else ("up" if age <= SENSOR_STALE_AFTER else "down")
            dropped = _int(s.get("pool_dropped_events"))
            extra = f"  pool dropped {dropped:,} events" if dropped else ""
            print(f"{sensor + '/' + name:14} {state:9} {cells}  {age:6.1f} s ago{extra}")


def _int(value: object) -> int:
    try:
        return int(float(value or 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _packet_time(ts: float) -> str:
    """A packet timestamp as a UTC date a person reads (packet time, not the wall clock)."""
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"at packet time {ts:.0f}"


def _app_problems(stats: dict[str, dict]) -> list[tuple[str, int]]:
    """The decoders' application-layer counters that mean trouble, summed (largest first)."""
    totals: dict[str, int] = {}
    for name, s in stats.items():
        if not name.startswith("decoder"):
            continue
        for key, value in s.items():
            if key.startswith("app.") and any(w in key for w in _TROUBLE):
                totals[key[4:]] = totals.get(key[4:], 0) + int(float(value or 0))
    return sorted(((k, v) for k, v in totals.items() if v), key=lambda kv: (-kv[1], kv[0]))[:8]


_TROUBLE = ("error", "exception", "malformed", "bound", "gave_up", "undecryptable")


def _order(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(("capture", "decoder", "flowtracker", "detector")):
        if name.startswith(prefix):
            return i, name
    return 9, name
