"""``tcp.stream`` / ``udp.stream``: conversation numbers as Wireshark gives them, for `read`.

Wireshark numbers each TCP and UDP conversation (address and port pair, either direction) from 0
in order of its first packet, separately for TCP and UDP. A TCP conversation gets a new number
when a bare SYN arrives whose sequence number differs from the first one its sender used on
that port pair (a port reused for a new connection). `read --follow tcp,N` and the filter field
``tcp.stream == N`` use the same numbers, so a stream found with one is followed with the other.

Bounded: at most MAX_CONVERSATIONS are remembered; beyond that the oldest are forgotten (a
packet of a forgotten conversation then starts a new number).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_CONVERSATIONS = 1_000_000


def endpoints(fields: dict[str, Any], proto: str) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """((src addr, sport), (dst addr, dport)) of the packet's ``proto`` ("tcp"/"udp") layer."""
    l4 = fields.get(proto)
    ip = fields.get("ip") or fields.get("ipv6")
    if not isinstance(l4, dict) or not isinstance(ip, dict) or "srcport" not in l4:
        return None
    if "fragment" in ip and ip["fragment"] == "later":
        return None
    return (ip["src"], l4["srcport"]), (ip["dst"], l4["dstport"])


class StreamIndex:
    """Adds ``tcp.stream`` / ``udp.stream`` to each packet's fields, in capture order."""

    def __init__(self, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self.max = max_conversations
        # unordered endpoint pair -> [stream number, {sender endpoint: its first sequence number},
        #                             time of the latest bare SYN, initial RTT]
        self.tcp: OrderedDict[frozenset, list] = OrderedDict()
        self.udp: OrderedDict[frozenset, int] = OrderedDict()
        self.next_tcp = 0
        self.next_udp = 0

    def assign(self, fields: dict[str, Any]) -> None:
        if "_malformed" in fields and "tcp" not in fields and "udp" not in fields:
            return
        tcp = fields.get("tcp")
        if isinstance(tcp, dict):
            ends = endpoints(fields, "tcp")
            if ends is not None and "seq" in tcp:
                conv = self._tcp_stream(ends, tcp)
                tcp["stream"] = conv[0]
                self._rtt(conv, tcp, fields["frame"]["time_epoch"])
            return
        udp = fields.get("udp")
        if isinstance(udp, dict):
            ends = endpoints(fields, "udp")
            if ends is not None:
                key = frozenset(ends)
                number = self.udp.get(key)
                if number is None:
                    number = self.udp[key] = self.next_udp
                    self.next_udp += 1
                    if len(self.udp) > self.max:
                        self.udp.popitem(last=False)
                udp["stream"] = number

    @staticmethod
    def _rtt(conv: list, tcp: dict[str, Any], ts: float) -> None:
        """``tcp.analysis.initial_rtt`` as Wireshark: latest bare SYN to the first ACK without SYN,
        shown on that packet and every later one of the stream."""
        flags = tcp["flags"]["value"] & 0x12
        if flags == 0x02:
            conv[2] = ts
        elif flags == 0x10 and conv[2] is not None and conv[3] is None:
            conv[3] = round(ts - conv[2], 9)
        if conv[3] is not None:
            tcp["analysis"] = {"initial_rtt": conv[3]}

    def _tcp_stream(self, ends: tuple[tuple[str, int], tuple[str, int]], tcp: dict[str, Any]) -> list:
        key = frozenset(ends)
        sender = ends[0]
        seq = tcp.get("seq_raw", tcp["seq"])  # the wire number: `seq` is relative (as Wireshark shows it)
        flags = tcp["flags"]["value"]
        conv = self.tcp.get(key)
        bare_syn = flags & 0x12 == 0x02
        if conv is not None and bare_syn:
            base = conv[1].get(sender)
            if base is not None and base != seq:
                conv = None  # the port pair is reused by a new connection
        if conv is None:
            conv = [self.next_tcp, {}, None, None]
            self.next_tcp += 1
            self.tcp[key] = conv
            self.tcp.move_to_end(key)
            if len(self.tcp) > self.max:
                self.tcp.popitem(last=False)
        bases = conv[1]
        if sender not in bases:
            bases[sender] = seq
        return conv
