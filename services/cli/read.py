"""`pktscope read CAPTURE`: decode a capture file offline, like tshark -r, with display filters.

No Redis, no sockets: packets go through the decoder service's own code (the capture
service's OfflineSource, services.decoder.dissect for L2-L4, one AppInspector for the
application layer), so what `read` shows is what the pipeline sees.

Exit codes: 0 done; 1 the file could not be read (or ended early: what it held is printed
first); 2 bad command line or display filter.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from services.capture.sources import CaptureError, OfflineSource

from .capfile import CapfileError, CaptureReader, CaptureWriter, wants_pcapng
from .common import local_net_list
from .decode_file import app_inspector, decoded_packets
from .filter import FilterError, compile_filter, filter_fields
from .findings import Annotator
from .follow import Follower, parse_follow
from .packetview import summary_line
from .read_flows import ReadFlows
from .streams import StreamIndex
from .text import json_line, safe
from .wireshark_view import public

_STREAM_FIELDS = ("tcp.stream", "udp.stream", "tcp.analysis")


def filter_error_text(expr: str, err: FilterError) -> str:
    """The expression, a caret under the failing column, and the message (for stderr)."""
    shown = safe(expr)
    # escaping may lengthen the text before the column; move the caret the same amount
    caret_at = len(safe(expr[: max(0, err.column - 1)]))
    return f"pktscope read: bad display filter\n  {shown}\n  {' ' * caret_at}^\n  {err}"


def read_capture(
    path: str,
    out: TextIO,
    *,
    as_json: bool = False,
    expr: str = "",
    count: int = 0,
    flows: bool = False,
    local_nets: list[str] | None = None,
    write_path: str | None = None,
    pcapng: bool = False,
    follow: str | None = None,
    follow_format: str = "ascii",
    extras: list[Any] | None = None,
    bad_list: str | None = None,
) -> tuple[int, str | None]:
    """Decode ``path`` and print one line per matching packet (or per flow).

    ``write_path``: the matching packets are also written there, exactly as the file holds
    them (pcapng when ``pcapng`` or the name ends .pcapng). ``follow`` ("tcp,N"...): print that
    stream's payload instead of packets. ``extras``: more consumers, each called as
    ``extra.add(fields, l4)`` for every matching packet and ``extra.write(out, as_json)`` at
    the end (stats, findings).

    Returns (matching packets, error) where error is None or why the file could not be read
    completely. Raises FilterError for a bad ``expr``, CaptureError for an unopenable file,
    CapfileError when the output cannot be written and ValueError for a bad ``follow``.
    """
    match = compile_filter(expr)
    # Stream numbers, RTT and findings are state kept for what reads them: the plain summary
    # lines do not; skipping them there took sv-merged's `read -Y` from 1.94 to ~1.6 s
    read_names = filter_fields(expr)
    summary_only = not (as_json or flows or follow or extras)
    keep_streams = not summary_only or any(n.startswith(_STREAM_FIELDS) for n in read_names)
    keep_findings = not summary_only or any(n.startswith("anomaly") for n in read_names)
    follower = Follower(*parse_follow(follow)) if follow else None
    annotator = Annotator(bad_list)
    source = OfflineSource(path)
    table = ReadFlows(local_nets=local_nets) if flows else None
    streams = StreamIndex()
    extras = extras or []
    quiet = follower is not None or bool(extras) or bool(write_path)  # -w prints nothing, as tshark -w
    raw = writer = None
    if write_path:
        raw = CaptureReader(path)
        raw_records = iter(raw)
        writer = CaptureWriter(write_path, pcapng=wants_pcapng(write_path, pcapng))
    try:
        matched, t0 = _read_loop(
            source,
            streams,
            match,
            out,
            as_json,
            count,
            table,
            follower,
            extras,
            quiet,
            raw,
            raw_records if raw is not None else None,
            writer,
            annotator if keep_findings else None,
            keep_streams,
        )
    finally:
        if writer is not None:
            writer.close()
    if follower is not None:
        follower.write(out, fmt=follow_format, as_json=as_json)
    for extra in extras:
        extra.write(out, as_json=as_json)
    if table is not None:
        for note in table.write(out, as_json=as_json, t0=t0 or 0.0):
            print(f"pktscope read: {note}", file=sys.stderr)
    return matched, source.error


def _read_loop(
    source: OfflineSource,
    streams: StreamIndex,
    match: Any,
    out: TextIO,
    as_json: bool,
    count: int,
    table: ReadFlows | None,
    follower: Follower | None,
    extras: list[Any],
    quiet: bool,
    raw: CaptureReader | None,
    raw_records: Any,
    writer: CaptureWriter | None,
    annotator: Annotator | None,
    keep_streams: bool = True,
) -> tuple[int, float | None]:
    write = out.write
    matched = 0
    t0: float | None = None
    for num, (fields, l4, app) in enumerate(decoded_packets(source, app_inspector()), 1):
        ts = fields["frame"]["time_epoch"]
        rec = None
        if raw_records is not None:
            rec = next(raw_records, None)
            if rec is None or rec.data != fields.get("_raw"):  # both readers must agree
                raise CapfileError(f"packet {num}: the capture reads differently for -w; not written further")
        if keep_streams:
            streams.assign(fields)
        if annotator is not None:
            annotator.annotate(fields)
        if t0 is None:
            t0 = ts
        if follower is not None:
            follower.add(fields, l4[7] if l4 is not None else None)
        if not match(fields):
            continue
        matched += 1
        if writer is not None and rec is not None and raw is not None:
            writer.write(rec, raw.interfaces[rec.iface])
        for extra in extras:
            extra.add(fields, l4)
        if table is not None:
            table.add(fields, l4, app)  # the raw app map: what the fast path puts in the record
        elif quiet:
            pass
        elif as_json:
            write(json_line(public(fields)))
            write("\n")
        else:
            write(summary_line(fields, ts - t0))
            write("\n")
        if count and matched >= count:
            break
    return matched, t0


def run(args: argparse.Namespace) -> int:
    """Entry point of the `read` subcommand; returns the exit code."""
    if args.count is not None and args.count < 0:
        print("pktscope read: --count must be 0 or more", file=sys.stderr)
        return 2
    if args.pcapng and not args.write:
        print("pktscope read: --pcapng goes with -w FILE (the file to write)", file=sys.stderr)
        return 2
    try:
        local_nets = local_net_list(args.local_net or [])
    except ValueError as exc:
        print(f"pktscope read: {exc}", file=sys.stderr)
        return 2
    extras: list[Any] = []
    try:
        if args.stats:
            from .stats import CaptureStats

            extras.append(CaptureStats(interval=args.interval, top=args.top))
        if args.findings:
            from .findings import FindingsReport

            extras.append(FindingsReport())
    except ValueError as exc:
        print(f"pktscope read: {exc}", file=sys.stderr)
        return 2
    modes = [
        name
        for name, on in (("--flows", args.flows), ("--follow", args.follow), ("--stats", args.stats))
        if on
    ]
    if len(modes) > 1:
        print(f"pktscope read: {' and '.join(modes)} cannot be combined; give one", file=sys.stderr)
        return 2
    try:
        matched, error = read_capture(
            args.capture,
            sys.stdout,
            as_json=args.json,
            expr=args.filter or "",
            count=args.count or 0,
            flows=args.flows,
            local_nets=local_nets or None,
            write_path=args.write,
            pcapng=args.pcapng,
            follow=args.follow,
            follow_format=args.follow_format,
            extras=extras,
            bad_list=args.bad_list,
        )
    except FilterError as err:
        print(filter_error_text(args.filter or "", err), file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"pktscope read: {err}", file=sys.stderr)
        return 2
    except (CaptureError, CapfileError) as err:
        print(f"pktscope read: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    sys.stdout.flush()
    if args.write:
        print(f"pktscope read: {matched} packets written to {safe(args.write)}", file=sys.stderr)
    if error:
        print(f"pktscope read: {args.capture}: capture file ends early: {error}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: Any) -> None:
    """Add the `read` subcommand to the `pktscope` parser."""
    p = subparsers.add_parser(
        "read",
        help="decode a capture file offline (like tshark -r), with display filters",
        description="Decode a pcap/pcapng file with the decoder's own code; see docs/filters.md.",
    )
    p.add_argument("capture", help="pcap or pcapng file")
    p.add_argument("--json", action="store_true", help="one JSON object per packet (or flow)")
    p.add_argument("--filter", "-Y", metavar="EXPR", help="Wireshark-style display filter")
    p.add_argument("--count", "-c", type=int, metavar="N", help="stop after N matching packets")
    p.add_argument("--flows", action="store_true", help="one record per flow instead of per packet")
    p.add_argument(
        "--local-net",
        action="append",
        metavar="CIDR",
        help="with --flows: a local network, for `outbound` (repeatable; default as `pktscope run`)",
    )
    add_analysis_arguments(p)
    p.set_defaults(func=run)


def add_analysis_arguments(p: argparse.ArgumentParser) -> None:
    """Writing, following, stats and findings options of `read` (issue 12)."""
    p.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        help="write the matching packets to FILE (pcap; pcapng if it ends .pcapng)",
    )
    p.add_argument("--pcapng", action="store_true", help="with -w: write pcapng whatever the name")
    p.add_argument(
        "--follow",
        metavar="KIND,N",
        help="print stream N's payload, both directions in order (KIND: tcp, udp, tls, http; N as tcp.stream/udp.stream)",
    )
    p.add_argument(
        "--follow-format",
        choices=("ascii", "hex", "raw"),
        default="ascii",
        help="with --follow: text (non-printables as '.'), a hex dump, or one hex line per segment",
    )
    p.add_argument(
        "--stats", action="store_true", help="protocol hierarchy, top talkers/conversations, throughput"
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="with --stats: throughput interval"
    )
    p.add_argument(
        "--top", type=int, default=10, metavar="N", help="with --stats: how many talkers/conversations"
    )
    p.add_argument(
        "--findings", action="store_true", help="list cleartext-credential and risky-cleartext findings"
    )
    p.add_argument(
        "--bad-list", metavar="FILE", help="known-bad addresses/CIDRs (one a line); flags packets to them"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pktscope")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["read", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
