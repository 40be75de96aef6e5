"""`pktscope read --flows`: the flow-tracker's own FlowTable, fed with the packets `read` decodes.

A second flow table would disagree with the pipeline's sooner or later, so there is none here:
each packet that passed the filter becomes the record (shared/records.py) the decoder's fast
path makes of it, built from what the dissector already found, and goes to
services.flowtracker.table.FlowTable in batches, watermarked the way the flow-tracker service
does it with one decoder. Its "end" events are the flows printed: the same flows, TCP states,
end reasons, outbound flags and names as the flow log of `pktscope run --flow-log`.
"""

from __future__ import annotations

import math
import socket
from operator import itemgetter
from typing import Any, TextIO

from services.decoder.dissect import PROTO_NAMES, L4Tuple
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.names import OWN_NAME_KEYS, SRC_DNS
from services.flowtracker.table import FlowTable
from shared.config import PipelineConfig
from shared.flowevents import EV_END, INDEX, from_row
from shared.records import FRAG_FIRST, FRAG_LATER, FRAG_NONE, TCP, UDP

from .text import json_line, safe

MAX_SHOWN = 1_000_000  # ended flows kept for printing; more are counted and reported
BATCH = PipelineConfig().batch_size  # records per FlowTable.add, as the capture batches packets
PROTO_TEXT = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
_PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}
_FRAGMENT = {"first": FRAG_FIRST, "later": FRAG_LATER}
_EV = INDEX["ev"]
_print_order = itemgetter(INDEX["first"], INDEX["fid"])  # first packet time, then creation order


def packet_record(fields: dict[str, Any], l4: L4Tuple | None, app: dict | None) -> tuple | None:
    """The record the decoder's fast path makes of this packet, or None when it makes none.

    ``fields``/``l4`` come from services.decoder.dissect (which shares the fast path's walkers),
    ``app`` from the AppInspector; tests/test_read.py compares with decode_batch packet by packet.
    Fragments get no ports or flags: the FlowTable counts every fragment in one portless flow
    anyway. ``paylen``, which the FlowTable does not read, is only filled in for unfragmented TCP
    (its payload length) and UDP (the payload given to the inspector); 0 otherwise.
    """
    if "_malformed" in fields:
        return None
    ip = fields.get("ip")
    family = socket.AF_INET
    if ip is None:
        ip = fields.get("ipv6")
        if ip is None:
            return None
        family = socket.AF_INET6
    frame = fields["frame"]
    num, ts, wirelen = frame["number"], frame["time_epoch"], frame["len"]
    if l4 is not None:  # TCP with payload or SYN/FIN/RST, UDP with payload: all unfragmented
        proto, src, dst, sport, dport, flags, seq, payload = l4
        paylen = fields["tcp"]["len"] if proto == TCP else len(payload)
        return (num, ts, wirelen, proto, src, dst, sport, dport, flags, paylen, FRAG_NONE, seq, app)
    src = socket.inet_pton(family, ip["src"])
    dst = socket.inet_pton(family, ip["dst"])
    frag = _FRAGMENT.get(ip.get("fragment"), FRAG_NONE)
    if family == socket.AF_INET:
        proto = ip["proto"]
    elif frag == FRAG_LATER:
        proto = ip["fraghdr"]["nxt"]  # the extension-header walk stops right after it
    else:  # after any extension headers: the last protocol the dissector named
        last = frame["protocols"].rpartition(":")[2]
        proto = _PROTO_NUMBERS.get(last) or int(last)
    sport = dport = flags = seq = paylen = 0
    if frag == FRAG_NONE:
        if proto == TCP:
            tcp = fields["tcp"]
            sport, dport, seq, paylen = tcp["srcport"], tcp["dstport"], tcp["seq"], tcp["len"]
            flags = tcp["flags"]["value"] & 0xFF
        elif proto == UDP:
            udp = fields["udp"]
            sport, dport = udp["srcport"], udp["dstport"]
    if proto in (1, 58):  # type and code in the seq slot, as the fast path (shared/records.py)
        icmp = fields.get("icmp" if proto == 1 else "icmpv6")
        seq = icmp["type"] << 8 | icmp["code"] if frag != FRAG_LATER and isinstance(icmp, dict) else -1
    return (num, ts, wirelen, proto, src, dst, sport, dport, flags, paylen, frag, seq, app)


def flow_names(event: dict[str, Any]) -> list[str]:
    """Names of a flow as "field=value": SNI / Host from its app facts, then its name from DNS."""
    app = event.get("app") or {}
    names = [f"{key}={app[key]}" for key, _rank in OWN_NAME_KEYS if app.get(key)]
    if event.get("name_src") == SRC_DNS and event.get("name"):
        names.append(f"dns={event['name']}")
    if app.get("dns.query"):
        names.append(f"dns.query={app['dns.query']}")
    return names


def flow_record(event: dict[str, Any]) -> dict[str, Any]:
    """What `--flows --json` prints for one "end" event (shared/flowevents.py)."""
    first, last = event["first"], event["last"]
    return {
        "proto": event["proto"],
        "src": event["src"],
        "sport": event["sport"],
        "dst": event["dst"],
        "dport": event["dport"],
        "initiator": event["src"],
        "outbound": event["outbound"],
        "first": first,
        "last": last,
        "duration": round(last - first, 6),
        "pkts_out": event["pkts_out"],
        "bytes_out": event["bytes_out"],
        "pkts_in": event["pkts_in"],
        "bytes_in": event["bytes_in"],
        "state": event["state"],
        "reason": event["reason"],
        "name": event["name"],
        "name_src": event["name_src"],
        "names": flow_names(event),
        "app": event["app"],
        "initial_rtt": event.get("initial_rtt"),
        "retransmissions": event.get("retransmissions", 0),
        "out_of_order": event.get("out_of_order", 0),
    }


def flow_line(event: dict[str, Any], t0: float) -> str:
    """The human line of one ended flow; every name from the network goes through ``safe``."""
    proto = PROTO_TEXT.get(event["proto"], str(event["proto"]))
    first, last, state = event["first"], event["last"], event["state"]
    names = " ".join(safe(n) for n in flow_names(event))
    tcp_notes = ""
    if event.get("initial_rtt") is not None:
        tcp_notes += f" irtt={event['initial_rtt']:.6f}"
    if event.get("retransmissions"):
        tcp_notes += f" retrans={event['retransmissions']}"
    if event.get("out_of_order"):
        tcp_notes += f" ooo={event['out_of_order']}"
    return (
        f"{proto:<6} {safe(event['src'])}:{event['sport']} -> {safe(event['dst'])}:{event['dport']}"
        f" start={first - t0:.6f} dur={last - first:.6f}"
        f" out={event['pkts_out']}p/{event['bytes_out']}B in={event['pkts_in']}p/{event['bytes_in']}B"
        + (f" {state}" if state else "")
        + (f" {names}" if names else "")
        + tcp_notes
    )


class ReadFlows:
    """Packets of one capture in, its ended flows out, through the flow-tracker's FlowTable.

    Settings are the pipeline's defaults, and the local networks too unless given (``pktscope
    read --local-net``, as `run` takes it), so ``outbound`` means what it means in the flow log.
    Periodic updates stay on, as in the pipeline, although only "end" events are printed.
    """

    def __init__(
        self, max_shown: int = MAX_SHOWN, batch: int = BATCH, local_nets: list[str] | None = None
    ) -> None:
        cfg = PipelineConfig()
        self.table = FlowTable(cfg.flow, LocalMatcher(local_nets or cfg.local_nets))
        self.batch: list[tuple] = []
        self.batch_size = max(1, batch)
        self.watermark = -math.inf  # as the flow-tracker's merge: the latest packet time fed
        self.ended: list[list] = []  # "end" event rows
        self.max_shown = max_shown
        self.not_shown = 0
        self.non_ip = 0  # passed the filter but made no record (not IP, or malformed)

    def add(self, fields: dict[str, Any], l4: L4Tuple | None, app: dict | None) -> None:
        """Count one packet that passed the filter (``app``: its inspector result, or None)."""
        try:
            rec = packet_record(fields, l4, app)
        except (KeyError, TypeError, ValueError, OSError):  # a field the dissector left out
            rec = None
        if rec is None:
            self.non_ip += 1
            return
        batch = self.batch
        batch.append(rec)
        if len(batch) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        batch = self.batch
        if batch:
            table = self.table
            table.add(batch)
            latest = max(rec[1] for rec in batch)
            if latest > self.watermark:  # as the service's merge: time never goes back
                self.watermark = latest
            self.batch = []
            table.advance(self.watermark)
            self._keep(table.take_rows())

    def _keep(self, rows: list[list]) -> None:
        ended = self.ended
        for row in rows:
            if row[_EV] == EV_END:
                if len(ended) < self.max_shown:
                    ended.append(row)
                else:
                    self.not_shown += 1

    def finish(self) -> list[dict[str, Any]]:
        """End the remaining flows ("eos", or "idle" when idle by the last packet) and return
        every ended flow's event, by first packet time (ties: the order flows began)."""
        self._flush()
        table = self.table
        table.finish("eos", self.watermark if self.watermark > -math.inf else 0.0)
        self._keep(table.take_rows())
        self.ended.sort(key=_print_order)
        events = [from_row(row) for row in self.ended]
        self.ended = []
        return events

    def write(self, out: TextIO, *, as_json: bool, t0: float) -> list[str]:
        """Finish, print one line / JSON object per flow; return notes for stderr."""
        write = out.write
        for event in self.finish():
            write(json_line(flow_record(event)) if as_json else flow_line(event, t0))
            write("\n")
        notes = []
        if self.table.evicted:
            notes.append(
                f"flow table full ({self.table.max_flows} flows): "
                f'{self.table.evicted} flows ended early (reason "evicted")'
            )
        if self.not_shown:
            notes.append(f"{self.not_shown} flows beyond the first {self.max_shown} not shown")
        return notes
