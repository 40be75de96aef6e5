"""`pktscope alerts pcap ALERT_ID -w FILE`: save the packets of an alert's flow as a capture file.

The packets come from the decoders' per-flow rings (services/decoder/ring.py, on with
`pktscope run --keep-packets N`), saved in Redis when the alert was raised. A live pipeline may
still be writing them when the alert appears, so this waits up to ``--wait`` seconds for them.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

from services.cli.capfile import CapfileError, CaptureWriter, Interface, Record, wants_pcapng
from services.cli.common import CliError, add_common, resolve_redis
from services.cli.text import safe
from shared import packet_ring
from shared.redis_conn import connect


def add_to(asub: argparse._SubParsersAction) -> None:
    pp = asub.add_parser("pcap", help="write the packets of an alert's flow to a capture file (run --keep-packets)")
    add_common(pp)
    pp.add_argument("alert_id", metavar="ALERT_ID", help="the alert's id (see `pktscope alerts list`)")
    pp.add_argument("-w", "--write", metavar="FILE", required=True, help="pcap, or pcapng if it ends .pcapng")
    pp.add_argument("--pcapng", action="store_true", help="write pcapng whatever the name")
    pp.add_argument("--wait", type=float, default=2.0, metavar="SECONDS", help="wait this long for the packets")
    pp.set_defaults(func=run_pcap)


def run_pcap(args: argparse.Namespace) -> int:
    resolve_redis(args)
    r = connect(args.redis_url, cluster=args.redis_cluster, decode_responses=False)
    deadline = time.monotonic() + max(0.0, args.wait)
    try:
        while True:
            packets = packet_ring.load(r, args.redis_prefix, args.alert_id)
            if packets or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    except redis.RedisError as exc:
        raise CliError(f"cannot read from {args.redis_url}: {exc}") from None
    if not packets:
        print(
            f"pktscope alerts pcap: no packets saved for alert {safe(args.alert_id)} "
            "(was the pipeline run with --keep-packets N, and is the id right?)",
            file=sys.stderr,
        )
        return 1
    interfaces: dict[int, int] = {}
    try:
        with CaptureWriter(args.write, pcapng=wants_pcapng(args.write, args.pcapng)) as writer:
            for ts, linktype, wirelen, data in packets:
                iface = interfaces.setdefault(linktype, len(interfaces))
                ticks = round(ts * 1_000_000)
                writer.write(Record(iface, ticks, len(data), max(wirelen, len(data)), data), Interface(linktype))
    except CapfileError as err:
        print(f"pktscope alerts pcap: {err}", file=sys.stderr)
        return 1
    print(f"pktscope alerts pcap: {len(packets)} packets written to {safe(args.write)}", file=sys.stderr)
    return 0
