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

from .common import local_net_list
from .decode_file import app_inspector, decoded_packets
from .filter import FilterError, compile_filter
from .packetview import summary_line
from .read_flows import ReadFlows
from .text import json_line, safe
from .wireshark_view import public


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
) -> tuple[int, str | None]:
    """Decode ``path`` and print one line per matching packet (or per flow).

    Returns (matching packets, error) where error is None or why the file could not be read
    completely. Raises FilterError for a bad ``expr`` and CaptureError for an unopenable file.
    """
    match = compile_filter(expr)
    source = OfflineSource(path)
    table = ReadFlows(local_nets=local_nets) if flows else None
    write = out.write
    matched = 0
    t0: float | None = None
    for fields, l4, app in decoded_packets(source, app_inspector()):
        ts = fields["frame"]["time_epoch"]
        if t0 is None:
            t0 = ts
        if not match(fields):
            continue
        matched += 1
        if table is not None:
            table.add(fields, l4, app)  # the raw app map: what the fast path puts in the record
        elif as_json:
            write(json_line(public(fields)))
            write("\n")
        else:
            write(summary_line(fields, ts - t0))
            write("\n")
        if count and matched >= count:
            break
    if table is not None:
        for note in table.write(out, as_json=as_json, t0=t0 or 0.0):
            print(f"pktscope read: {note}", file=sys.stderr)
    return matched, source.error


def run(args: argparse.Namespace) -> int:
    """Entry point of the `read` subcommand; returns the exit code."""
    if args.count is not None and args.count < 0:
        print("pktscope read: --count must be 0 or more", file=sys.stderr)
        return 2
    try:
        local_nets = local_net_list(args.local_net or [])
    except ValueError as exc:
        print(f"pktscope read: {exc}", file=sys.stderr)
        return 2
    try:
        _, error = read_capture(
            args.capture,
            sys.stdout,
            as_json=args.json,
            expr=args.filter or "",
            count=args.count or 0,
            flows=args.flows,
            local_nets=local_nets or None,
        )
    except FilterError as err:
        print(filter_error_text(args.filter or "", err), file=sys.stderr)
        return 2
    except CaptureError as err:
        print(f"pktscope read: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    sys.stdout.flush()
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
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pktscope")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["read", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
