"""`pktscope alerts list|follow`: the alert history from Redis, and live alerts from the PUB socket."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import msgpack
import redis
import zmq

from services.cli.common import CliError, add_common, resolve_redis
from services.cli.text import safe as escape  # the same escaping as `pktscope read`
from shared.curve import CurveError, curve_client
from shared.redis_conn import connect
from shared.redis_keys import Keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="list the alert history or follow alerts as they come")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    lp = asub.add_parser("list", help="print the durable alert history from Redis")
    add_common(lp)
    lp.add_argument("--json", action="store_true", help="one JSON object per line")
    lp.add_argument("--count", type=int, default=0, help="only the newest N alerts")
    lp.add_argument("--kind", action="append", help="only alerts of this kind (repeatable)")
    lp.set_defaults(func=run_list)
    fp = asub.add_parser("follow", help="print alerts as they are raised (subscribes to the PUB socket)")
    add_common(fp)
    fp.add_argument("--json", action="store_true", help="one JSON object per line")
    fp.add_argument(
        "--since",
        metavar="ID",
        default=None,
        help="first replay the history after this alert id ('0' for all), then follow live",
    )
    fp.add_argument("--endpoint", default=None, help="PUB endpoint (default: the pipeline's)")
    fp.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="CURVE key directory made by `pktscope keys` (default: the pipeline's, if it uses CURVE)",
    )
    fp.add_argument("--client", default="client", help="which client key of --curve-keys to use")
    fp.add_argument("--kind", action="append", help="only alerts of this kind (repeatable)")
    fp.add_argument("--max", type=int, default=0, help="exit after N alerts (0: run until Ctrl-C)")
    fp.set_defaults(func=run_follow)
    from services.cli import alert_pcap  # `alerts pcap`: an alert's flow packets (run --keep-packets)

    alert_pcap.add_to(asub)


def entry_to_alert(entry_id: str, fields: dict[str, str]) -> dict:
    """A stream entry -> the alert map (with its id)."""
    try:
        alert = json.loads(fields.get("alert", "{}"))
    except ValueError:
        alert = {"kind": fields.get("kind", "?"), "title": "unreadable alert entry"}
    alert["id"] = entry_id
    return alert


def format_alert(alert: dict) -> str:
    ts = alert.get("ts")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts))) if isinstance(ts, (int, float)) else "?"
    )
    return (
        f"{when}  {escape(str(alert.get('severity', '?'))):8}  {escape(str(alert.get('kind', '?'))):18}  "
        f"{escape(str(alert.get('title', '')))}  [{escape(str(alert.get('id', '')))}]"
    )


def _emit(alert: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(alert, sort_keys=True, ensure_ascii=True), flush=True)
    else:
        print(format_alert(alert), flush=True)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def run_list(args: argparse.Namespace) -> int:
    resolve_redis(args)
    r = connect(args.redis_url, cluster=args.redis_cluster)
    key = Keys(args.redis_prefix).alerts()
    try:
        entries = r.xrevrange(key, count=args.count) if args.count else r.xrevrange(key)
    except redis.RedisError as exc:
        raise CliError(f"cannot read alerts from {args.redis_url}: {exc}") from None
    for entry_id, fields in reversed(entries):
        alert = entry_to_alert(entry_id, fields)
        if args.kind and alert.get("kind") not in args.kind:
            continue
        _emit(alert, args.json)
    return 0


def run_follow(args: argparse.Namespace) -> int:
    """Subscribe first, then replay the history, then go live: no gap, and ids dedupe the overlap."""
    endpoint = args.endpoint
    if args.since is not None or endpoint is None:
        resolve_redis(args)
    if endpoint is None:
        if args.pipeline is None:
            raise CliError("no pipeline found: pass --endpoint or --run-dir")
        endpoint = args.pipeline.alerts_pub_endpoint
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    keys_dir = args.curve_keys
    pipeline = getattr(args, "pipeline", None)
    if keys_dir is None and pipeline is not None and pipeline.alerts_curve_dir:
        keys_dir = Path(pipeline.alerts_curve_dir)
    if keys_dir is not None:
        try:
            curve_client(sub, keys_dir, args.client)
        except CurveError as exc:
            raise CliError(str(exc)) from None
    for kind in args.kind or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, kind.encode())
    sub.connect(endpoint)
    last: tuple[int, int] = (-1, -1)
    shown = 0
    if args.since is not None:
        r = connect(args.redis_url, cluster=args.redis_cluster)
        key = Keys(args.redis_prefix).alerts()
        start = "-" if args.since in ("0", "-", "") else f"({args.since}"
        try:
            for entry_id, fields in r.xrange(key, min=start, max="+"):
                alert = entry_to_alert(entry_id, fields)
                last = _id_tuple(entry_id)
                if args.kind and alert.get("kind") not in args.kind:
                    continue
                _emit(alert, args.json)
                shown += 1
                if args.max and shown >= args.max:
                    return 0
        except redis.RedisError as exc:
            raise CliError(f"cannot read alerts from {args.redis_url}: {exc}") from None
    try:
        while True:
            parts = sub.recv_multipart()
            if len(parts) != 2:
                continue
            try:
                alert = msgpack.unpackb(parts[1], raw=False)
            except Exception:  # a bad frame is skipped, never fatal
                continue
            if not isinstance(alert, dict):
                continue
            try:
                if _id_tuple(str(alert.get("id", "0-0"))) <= last:
                    continue  # already printed from the history
            except ValueError:
                pass
            _emit(alert, args.json)
            shown += 1
            if args.max and shown >= args.max:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sub.close(linger=0)
