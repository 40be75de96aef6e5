"""`pktscope capture -i IFACE` and `pktscope interfaces`: live decode to the terminal, like tshark -i.

Packets come from the capture service's own LiveSource (libpcap; the BPF filter runs in the
kernel), go through the same dissector, stream numbering, application inspector and display
filter as `pktscope read`, and print the same lines (or JSON objects). ``-w FILE`` also writes
the matching packets (pcap, or pcapng with the interface's name and description). Runs until
Ctrl-C or ``-c N`` matching packets; then prints how many packets it saw, and libpcap's drops,
to stderr.

Exit codes: 0 done (or Ctrl-C); 1 the interface cannot be captured on or the file cannot be
written; 2 bad command line, BPF or display filter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from services.capture.sources import CaptureError, LiveSource, check_bpf
from services.decoder.dissect import dissect

from .capfile import (
    OPT_IF_DESCRIPTION,
    OPT_IF_NAME,
    CapfileError,
    CaptureWriter,
    Interface,
    Record,
    wants_pcapng,
)
from .decode_file import app_inspector
from .filter import FilterError, compile_filter
from .findings import Annotator
from .packetview import merge_app, summary_line
from .read import filter_error_text
from .streams import StreamIndex
from .text import json_line, safe

SNAPLEN = 262144


class LiveDecoder:
    """One live capture: decode, filter, print and write each packet as it arrives."""

    def __init__(
        self,
        interface: str,
        out: TextIO,
        *,
        bpf: str = "",
        expr: str = "",
        as_json: bool = False,
        count: int = 0,
        write_path: str | None = None,
        pcapng: bool = False,
        bad_list: str | None = None,
    ) -> None:
        self.match = compile_filter(expr)
        self.annotator = Annotator(bad_list)
        self.source = LiveSource(interface, bpf, snaplen=SNAPLEN)
        self.linktype = self.source.linktype
        self.out = out
        self.as_json = as_json
        self.count = count
        self.streams = StreamIndex()
        self.inspector = app_inspector()
        self.seen = 0
        self.matched = 0
        self.t0: float | None = None
        self.writer: CaptureWriter | None = None
        self.iface = Interface(
            self.linktype,
            SNAPLEN,
            options=[
                (OPT_IF_NAME, interface.encode()),
                (OPT_IF_DESCRIPTION, _description(interface).encode()),
            ],
        )
        if write_path:
            self.writer = CaptureWriter(write_path, pcapng=wants_pcapng(write_path, pcapng))

    @property
    def done(self) -> bool:
        return bool(self.count) and self.matched >= self.count

    def run(self, stop_after: float | None = None) -> None:
        """Capture until ``count`` packets matched, Ctrl-C, or ``stop_after`` seconds."""
        batch: list[tuple[float, bytes]] = []
        end = None if stop_after is None else time.monotonic() + stop_after
        try:
            while not self.done and (end is None or time.monotonic() < end):
                self.source.poll(0.2, lambda ts, data: batch.append((ts, bytes(data))))
                for ts, data in batch:
                    self.packet(ts, data)
                    if self.done:
                        break
                batch.clear()
                self.out.flush()
        finally:
            if self.writer is not None:
                self.writer.close()

    def packet(self, ts: float, data: bytes) -> None:
        self.seen += 1
        fields, l4 = dissect(self.seen, ts, self.linktype, len(data), data)
        self.streams.assign(fields)
        inspector = self.inspector
        if l4 is not None and inspector is not None:
            try:
                app = inspector.inspect(ts, *l4)
            except Exception as exc:  # an inspector bug must not end the capture
                app = None
                fields["_app_error"] = f"{type(exc).__name__}: {exc}"
            if app:
                merge_app(fields, app)
        self.annotator.annotate(fields)
        if inspector is not None:
            inspector.expire(ts)
        if self.t0 is None:
            self.t0 = ts
        fields["frame"]["time_relative"] = round(ts - self.t0, 9)
        if not self.match(fields):
            return
        self.matched += 1
        if self.writer is not None:
            wirelen = max(len(data), int(fields["frame"].get("len", 0)))
            self.writer.write(Record(0, round(ts * 1_000_000), len(data), wirelen, data), self.iface)
        if self.as_json:
            self.out.write(json_line(fields) + "\n")
        else:
            self.out.write(summary_line(fields, ts - self.t0) + "\n")


def _description(interface: str) -> str:
    """What pcapng's if_description says: the interface's addresses, when it has any."""
    addrs = [a for _name, a in interface_addresses().get(interface, [])]
    return f"{interface} ({', '.join(addrs)})" if addrs else interface


def interface_addresses() -> dict[str, list[tuple[str, str]]]:
    """Interface name -> [(family, address)] from the OS (psutil)."""
    import socket

    import psutil

    families = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6", getattr(socket, "AF_PACKET", -1): "mac"}
    out: dict[str, list[tuple[str, str]]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        out[name] = [(families[a.family], a.address) for a in addrs if a.family in families]
    return out


def list_interfaces() -> list[dict[str, Any]]:
    """What can be captured on (libpcap's list, as `tshark -D`), with state and addresses."""
    import pcap
    import psutil

    names = list(pcap.findalldevs())
    addresses = interface_addresses()
    stats = psutil.net_if_stats()
    rows = []
    for name in names:
        st = stats.get(name)
        rows.append(
            {
                "name": name,
                "up": bool(st.isup) if st else None,
                "mtu": st.mtu if st else None,
                "addresses": [{"family": f, "address": a} for f, a in addresses.get(name, [])],
            }
        )
    return rows


def run_capture(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 0:
        print("pktscope capture: --count must be 0 or more", file=sys.stderr)
        return 2
    if args.pcapng and not args.write:
        print("pktscope capture: --pcapng goes with -w FILE (the file to write)", file=sys.stderr)
        return 2
    if args.bpf:
        try:
            check_bpf(args.bpf)
        except CaptureError as err:
            print(f"pktscope capture: {err}", file=sys.stderr)
            return 2
    try:
        live = LiveDecoder(
            args.interface,
            sys.stdout,
            bpf=args.bpf or "",
            expr=args.filter or "",
            as_json=args.json,
            count=args.count or 0,
            write_path=args.write,
            pcapng=args.pcapng,
            bad_list=args.bad_list,
        )
    except FilterError as err:
        print(
            filter_error_text(args.filter or "", err).replace("pktscope read", "pktscope capture"),
            file=sys.stderr,
        )
        return 2
    except ValueError as err:  # the known-bad list
        print(f"pktscope capture: {err}", file=sys.stderr)
        return 2
    except (CaptureError, CapfileError) as err:
        print(f"pktscope capture: {err}", file=sys.stderr)
        return 1
    print(f"pktscope capture: capturing on {safe(args.interface)}", file=sys.stderr)
    interrupted = False
    try:
        live.run(stop_after=args.duration)
    except KeyboardInterrupt:
        interrupted = True
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    received, dropped, ifdropped = live.source.stats()
    note = f"{live.matched} packets shown of {live.seen} captured; libpcap dropped {dropped} (interface {ifdropped})"
    if args.write:
        note += f"; written to {safe(args.write)}"
    print(("\n" if interrupted else "") + f"pktscope capture: {note}", file=sys.stderr)
    return 0


def run_interfaces(args: argparse.Namespace) -> int:
    rows = list_interfaces()
    if args.json:
        print(json.dumps(rows))
        return 0
    for i, row in enumerate(rows, 1):
        state = "" if row["up"] is None else ("up" if row["up"] else "down")
        addrs = ", ".join(a["address"] for a in row["addresses"] if a["family"] != "mac")
        print(
            f"{i}. {safe(row['name'])}"
            + (f" [{state}]" if state else "")
            + (f" {safe(addrs)}" if addrs else "")
        )
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "capture",
        help="decode a live interface to the terminal (like tshark -i), optionally writing a file",
        description="Live capture: what `pktscope read` prints, from an interface, until Ctrl-C or -c N packets.",
    )
    p.add_argument(
        "-i", "--interface", required=True, help="interface to capture on (see `pktscope interfaces`)"
    )
    p.add_argument(
        "--bpf", "-f", metavar="EXPR", help="BPF capture filter (kernel side, see `man pcap-filter`)"
    )
    p.add_argument("--filter", "-Y", metavar="EXPR", help="Wireshark-style display filter")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    p.add_argument("--count", "-c", type=int, metavar="N", help="stop after N matching packets")
    p.add_argument(
        "-w", "--write", metavar="FILE", help="also write matching packets (pcap; pcapng if .pcapng)"
    )
    p.add_argument("--pcapng", action="store_true", help="with -w: write pcapng whatever the name")
    p.add_argument(
        "--bad-list",
        metavar="FILE",
        help="known-bad addresses/CIDRs (one a line): an anomaly on packets to/from them",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.set_defaults(func=run_capture)
    q = subparsers.add_parser(
        "interfaces", help="list the interfaces that can be captured on, with addresses"
    )
    q.add_argument("--json", action="store_true", help="a JSON list")
    q.set_defaults(func=run_interfaces)
