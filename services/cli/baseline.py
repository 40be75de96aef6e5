"""`pktscope baseline show|allow|reset|export|import`: inspect and edit what the detector learned."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import redis

from services.cli.common import CliError, add_common, resolve_redis
from services.cli.text import safe
from services.detector.baseline_store import BaselineError, BaselineStore
from services.detector.keys import SET_ASN, SET_COUNTRY, SET_DEST, DetectorKeys
from shared.redis_conn import connect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="show or edit the learned baseline (entities, destinations, volume)")
    add_actions(p)


def add_actions(p: argparse.ArgumentParser) -> None:
    """The show/allow/reset/export/import actions, each with --run-dir/--redis-url/--redis-prefix."""
    bsub = p.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)

    sp = bsub.add_parser("show", help="what is known about every entity, or one")
    sp.add_argument("entity", nargs="?", help="an executable path or host:<address>")
    sp.add_argument("--json", action="store_true", help="print JSON")

    ap = bsub.add_parser("allow", help="add a destination, country, AS or identity so it never alerts")
    ap.add_argument("entity")
    ap.add_argument("label", nargs="?", help="destination label: AS organisation, domain or address")
    ap.add_argument("--country", help="ISO country code, e.g. DE")
    ap.add_argument("--asn", type=int, help="AS number, e.g. 15169")
    ap.add_argument("--identity", help="SHA-256 of the executable to accept as its baseline identity")

    rp = bsub.add_parser("reset", help="forget one entity's baseline, or everything (learning restarts)")
    rp.add_argument("entity", nargs="?")

    ep = bsub.add_parser("export", help="write the baseline to a JSON file ('-' for stdout)")
    ep.add_argument("file")

    ip = bsub.add_parser("import", help="merge a baseline JSON file into Redis")
    ip.add_argument("file")

    for action in (sp, ap, rp, ep, ip):
        add_common(action)
        action.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "redis_url", None) is None or getattr(args, "redis_prefix", None) is None:
        resolve_redis(args)
    store = BaselineStore(
        connect(args.redis_url, cluster=args.redis_cluster), DetectorKeys(args.redis_prefix)
    )
    try:
        return ACTIONS[args.baseline_command](store, args)
    except BaselineError as exc:
        raise CliError(str(exc)) from None
    except redis.RedisError as exc:
        raise CliError(f"Redis {args.redis_url}: {exc}") from None


def _time(value: str | float | None) -> str:
    try:
        ts = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _mib(value: str | float | None) -> str:
    try:
        return f"{float(value) / 1048576:.2f} MiB"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"


def _show(store: BaselineStore, args: argparse.Namespace) -> int:
    names = [args.entity] if args.entity else store.entities()
    found = [d for d in (store.entity(n) for n in names) if d is not None]
    if args.entity and not found:
        raise CliError(f"no baseline for {safe(args.entity)}")
    if args.json:
        print(json.dumps({"learning": store.learning(), "entities": found}, indent=2, ensure_ascii=True))
        return 0
    learning = store.learning()
    if learning:
        print(
            f"learning window (packet time): {_time(learning.get('start'))} .. {_time(learning.get('end'))}"
        )
    else:
        print("learning window: not started")
    for data in found:
        info, vol = data["info"], data["volume"]
        print(f"\n{safe(data['entity'])}")
        print(f"  first seen {_time(info.get('first_seen'))}, last seen {_time(info.get('last_seen'))}")
        for title, what in (("destinations", SET_DEST), ("countries", SET_COUNTRY), ("ASes", SET_ASN)):
            members = data[what]
            shown = ", ".join(safe(m) for m in members[:20]) + (", ..." if len(members) > 20 else "")
            print(f"  {title} ({len(members)}): {shown or '-'}")
        if vol.get("n"):
            std = float(vol.get("var", 0) or 0) ** 0.5
            print(
                f"  volume: {vol['n']} intervals, mean {_mib(vol.get('mean'))}, std {_mib(std)}, "
                f"last {_mib(vol.get('last_bytes'))}"
            )
        if info.get("identity"):
            print(f"  identity: sha256 {safe(info['identity'])}")
            if info.get("identity_seen") and info["identity_seen"] != info["identity"]:
                print(f"  last seen running: sha256 {safe(info['identity_seen'])} (differs)")
    if not found:
        print("no entities yet")
    return 0


def _allow(store: BaselineStore, args: argparse.Namespace) -> int:
    store.allow(args.entity, label=args.label, country=args.country, asn=args.asn, identity=args.identity)
    print(f"allowed for {safe(args.entity)}")
    return 0


def _reset(store: BaselineStore, args: argparse.Namespace) -> int:
    deleted = store.reset(args.entity)
    what = safe(args.entity) if args.entity else "everything (learning starts again)"
    print(f"reset {what}: {deleted} keys deleted")
    return 0


def _export(store: BaselineStore, args: argparse.Namespace) -> int:
    text = json.dumps(store.export(), indent=2, sort_keys=True, ensure_ascii=True)
    if args.file == "-":
        print(text)
    else:
        Path(args.file).write_text(text + "\n")
        print(f"exported to {args.file}", file=sys.stderr)
    return 0


def _import(store: BaselineStore, args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {args.file}: {exc}") from None
    count = store.import_(data)
    print(f"imported {count} entities")
    return 0


ACTIONS = {"show": _show, "allow": _allow, "reset": _reset, "export": _export, "import": _import}


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m services.cli.baseline ACTION ...`), same as `pktscope baseline`."""
    parser = argparse.ArgumentParser(prog="python -m services.cli.baseline")
    add_actions(parser)
    try:
        return run(parser.parse_args(argv))
    except CliError as exc:
        print(f"pktscope: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
