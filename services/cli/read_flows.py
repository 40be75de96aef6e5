"""A small flow table for `pktscope read --flows`: one record per 5-tuple in a capture file.

Self-contained on purpose (the flow-tracker service keeps its own, timer-driven table): a flow
is keyed by its 5-tuple in both directions and lives until the end of the file, unless the
5-tuple is reused (a SYN after FIN/RST, or after IDLE_TIMEOUT of silence), which starts a new
flow. The number of flows is bounded; packets of flows beyond the bound are only counted.
"""

from __future__ import annotations

from typing import Any

from .text import safe

MAX_FLOWS = 1_000_000
MAX_NAMES = 16
IDLE_TIMEOUT = 600.0  # seconds of packet time after which a reused 5-tuple is a new flow
_L4_PROTOS = (("tcp", 6), ("udp", 17), ("icmp", 1), ("icmpv6", 58))
_NAME_FIELDS = (("tls", "sni"), ("quic", "sni"), ("http", "host"))
PROTO_TEXT = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}

# TCP flag bits
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


class Flow:
    """Counters and state of one flow; ``src``/``sport`` is the initiator (first packet's sender)."""

    __slots__ = (
        "proto",
        "src",
        "sport",
        "dst",
        "dport",
        "first",
        "last",
        "pkts_out",
        "bytes_out",
        "pkts_in",
        "bytes_in",
        "state",
        "fin_out",
        "fin_in",
        "names",
    )

    def __init__(self, proto: int, src: str, sport: int, dst: str, dport: int, ts: float) -> None:
        self.proto, self.src, self.sport, self.dst, self.dport = proto, src, sport, dst, dport
        self.first = self.last = ts
        self.pkts_out = self.bytes_out = self.pkts_in = self.bytes_in = 0
        self.state = "new" if proto == 6 else ""
        self.fin_out = self.fin_in = False
        self.names: list[str] = []

    def tcp(self, flags: int, outbound: bool) -> None:
        """Advance the TCP state: syn -> syn_ack -> established -> fin -> closed, or rst."""
        if self.state == "rst":
            return
        if flags & RST:
            self.state = "rst"
            return
        if flags & FIN:
            if outbound:
                self.fin_out = True
            else:
                self.fin_in = True
            self.state = "closed" if self.fin_out and self.fin_in else "fin"
            return
        if self.state in ("fin", "closed"):
            return
        if flags & SYN:
            if flags & ACK:
                if self.state in ("new", "syn"):
                    self.state = "syn_ack"
            elif self.state == "new":
                self.state = "syn"
        elif flags & ACK and self.state in ("syn_ack", "new"):
            # "new": the capture began mid-connection; an ACK means it was already open
            self.state = "established"

    def add_name(self, kind: str, name: object) -> None:
        text = f"{kind}={name}"
        if len(self.names) < MAX_NAMES and text not in self.names:
            self.names.append(text)

    def record(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "initiator": self.src,
            "first": self.first,
            "last": self.last,
            "duration": round(self.last - self.first, 6),
            "pkts_out": self.pkts_out,
            "bytes_out": self.bytes_out,
            "pkts_in": self.pkts_in,
            "bytes_in": self.bytes_in,
            "state": self.state,
            "names": list(self.names),
        }

    def line(self, t0: float) -> str:
        proto = PROTO_TEXT.get(self.proto, str(self.proto))
        names = " ".join(safe(n) for n in self.names)
        state = f" {self.state}" if self.state else ""
        return (
            f"{proto:<6} {safe(self.src)}:{self.sport} -> {safe(self.dst)}:{self.dport}"
            f" start={self.first - t0:.6f} dur={self.last - self.first:.6f}"
            f" out={self.pkts_out}p/{self.bytes_out}B in={self.pkts_in}p/{self.bytes_in}B{state}"
            + (f" {names}" if names else "")
        )


def five_tuple(fields: dict[str, Any]) -> tuple[int, str, int, str, int] | None:
    """(proto, src, sport, dst, dport) of an IP packet, None for anything else."""
    ip = fields.get("ip")
    if not isinstance(ip, dict):
        ip = fields.get("ipv6")
        if not isinstance(ip, dict):
            return None
        proto = ip.get("nxt", 0)
    else:
        proto = ip.get("proto", 0)
    src, dst = ip.get("src"), ip.get("dst")
    if src is None or dst is None:
        return None
    for name, number in _L4_PROTOS:
        l4 = fields.get(name)
        if isinstance(l4, dict):
            proto = number
            return proto, str(src), int(l4.get("srcport", 0) or 0), str(dst), int(l4.get("dstport", 0) or 0)
    return int(proto or 0), str(src), 0, str(dst), 0


def _nodes(node: Any) -> list[dict]:
    """A protocol node, or each of them when one packet carried several messages."""
    if isinstance(node, dict):
        return [node]
    if isinstance(node, list):
        return [n for n in node if isinstance(n, dict)]
    return []


class FlowTable:
    """Flows of one capture, in order of their first packet."""

    def __init__(self, max_flows: int = MAX_FLOWS, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.flows: dict[tuple, Flow] = {}
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.order: list[Flow] = []  # every flow, in order of its first packet
        self.untracked_packets = 0
        self.non_ip_packets = 0

    def add(self, fields: dict[str, Any]) -> None:
        """Count one decoded packet (nested fields, app fields merged)."""
        key5 = five_tuple(fields)
        if key5 is None:
            self.non_ip_packets += 1
            return
        proto, src, sport, dst, dport = key5
        frame = fields.get("frame", {})
        ts = frame.get("time_epoch", 0.0)
        size = frame.get("len", 0)
        tcp = fields.get("tcp")
        flags = 0
        if proto == 6 and isinstance(tcp, dict):
            node = tcp.get("flags")
            flags = (node.get("value", 0) if isinstance(node, dict) else int(node or 0)) & 0xFF
        fwd = (proto, src, sport, dst, dport)
        rev = (proto, dst, dport, src, sport)
        outbound = True
        flow = self.flows.get(fwd)
        if flow is None:
            flow = self.flows.get(rev)
            outbound = False
        if flow is not None and self._starts_over(flow, ts, flags):
            # the 5-tuple is reused: a new connection after a finished one, or after a long silence
            del self.flows[fwd if outbound else rev]
            flow = None
        if flow is None:
            if len(self.order) >= self.max_flows:
                self.untracked_packets += 1
                return
            flow = Flow(proto, src, sport, dst, dport, ts)
            self.flows[fwd] = flow
            self.order.append(flow)
            outbound = True
        if ts > flow.last:
            flow.last = ts
        if outbound:
            flow.pkts_out += 1
            flow.bytes_out += size
        else:
            flow.pkts_in += 1
            flow.bytes_in += size
        if proto == 6 and isinstance(tcp, dict):
            flow.tcp(flags, outbound)
        self._names(flow, fields)

    def _starts_over(self, flow: Flow, ts: float, flags: int) -> bool:
        if ts - flow.last > self.idle_timeout:
            return True
        return flags & (SYN | ACK) == SYN and flow.state in ("fin", "closed", "rst")

    @staticmethod
    def _names(flow: Flow, fields: dict[str, Any]) -> None:
        for layer, key in _NAME_FIELDS:
            for node in _nodes(fields.get(layer)):
                if node.get(key):
                    flow.add_name(f"{layer}.{key}", node[key])
        for dns in _nodes(fields.get("dns")):
            for q in dns.get("queries") or ():
                if isinstance(q, dict) and q.get("name"):
                    flow.add_name("dns", q["name"])

    def records(self) -> list[Flow]:
        return list(self.order)
