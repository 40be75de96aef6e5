"""Recent packets per flow, so that an alert can be saved with the packets of its flow.

Where the ring lives, and why: in the decoders. Capture shards by a symmetric flow hash, so
each flow's packets all reach one decoder, in order; a decoder can therefore keep a flow's last
packets in memory without any coordination, and the hot capture process stays untouched. Only
``pktscope run --keep-packets N`` turns it on (off by default: it costs memory and a dict
update per packet).

Bounds: at most ``per_flow`` packets per flow (the newest; the oldest drop out) and at most
``max_flows`` flows (the least recently seen are forgotten), so memory is bounded by
per_flow x max_flows x snaplen.

How an alert gets its packets: the detector, after it raised an alert about a flow, adds a
request (alert id, flow 5-tuple) to the Redis stream ``<prefix>:ring:requests`` (capped). Each
decoder reads that stream (non-blocking, from where it left off, at most every POLL_EVERY
seconds) and the one holding the flow writes its packets to the Redis list
``<prefix>:ring:<alert id>`` (msgpack ``[ts, linktype, wirelen, data]`` per packet, expiring
after RING_TTL seconds). `pktscope alerts pcap ALERT_ID -w FILE` writes them as a capture file.
A request for a flow that was already forgotten (or arrives after the decoders ended, as at the
very end of a file replay) finds nothing; the CLI says so.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict, deque
from typing import Any

import msgpack

from shared.packet_ring import RING_TTL, requests_key, ring_key

POLL_EVERY = 0.25


def flow_key(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> tuple:
    """Both directions of a flow give the same key."""
    a, b = (src, sport), (dst, dport)
    return (proto, *a, *b) if a <= b else (proto, *b, *a)


def text_flow_key(proto: int, src: str, sport: int, dst: str, dport: int) -> tuple:
    """The key of a flow given with text addresses (as alerts name it)."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    return flow_key(proto, socket.inet_pton(family, src), sport, socket.inet_pton(family, dst), dport)


class PacketRing:
    """The newest ``per_flow`` packets of up to ``max_flows`` flows."""

    def __init__(self, per_flow: int, max_flows: int = 4096) -> None:
        self.per_flow = max(1, per_flow)
        self.max_flows = max(1, max_flows)
        self.flows: OrderedDict[tuple, deque] = OrderedDict()
        self.forgotten = 0

    def add(self, key: tuple, packet: tuple) -> None:
        flows = self.flows
        ring = flows.get(key)
        if ring is None:
            if len(flows) >= self.max_flows:
                flows.popitem(last=False)
                self.forgotten += 1
            ring = flows[key] = deque(maxlen=self.per_flow)
        else:
            flows.move_to_end(key)
        ring.append(packet)

    def add_batch(self, packets: Any, records: Any) -> None:
        """Remember the packets of a decoded batch: ``records`` name each packet's flow by number."""
        by_num = {p[0]: p for p in packets}
        for rec in records:
            num, _ts, _wl, proto, src, dst, sport, dport = rec[:8]
            pkt = by_num.get(num)
            if pkt is not None:
                _num, ts, linktype, wirelen, data = pkt
                self.add(flow_key(proto, src, sport, dst, dport), (ts, linktype, wirelen, bytes(data)))

    def get(self, key: tuple) -> list[tuple]:
        ring = self.flows.get(key)
        return list(ring) if ring is not None else []


class RingServer:
    """A decoder's side of the Redis exchange: answer alert requests for flows it holds."""

    def __init__(self, ring: PacketRing, r: Any, prefix: str) -> None:
        self.ring = ring
        self.r = r
        self.prefix = prefix
        self.last_id = "$"  # only requests made after this decoder started
        self.next_poll = 0.0
        self.saved = 0
        self.errors = 0
        if r is not None:
            try:  # start from the stream's current end, so an old backlog is not replayed
                last = r.xrevrange(requests_key(prefix), count=1)
                self.last_id = last[0][0] if last else "0-0"
            except Exception:
                self.errors += 1

    def poll(self) -> None:
        now = time.monotonic()
        if self.r is None or now < self.next_poll:
            return
        self.next_poll = now + POLL_EVERY
        try:
            got = self.r.xread({requests_key(self.prefix): self.last_id}, count=100)
        except Exception:
            self.errors += 1
            return
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                self._answer(fields)

    def _answer(self, fields: dict) -> None:
        try:
            alert_id = _text(fields[b"alert" if b"alert" in fields else "alert"])
            parts = _text(fields[b"flow" if b"flow" in fields else "flow"]).split("|")
            key = text_flow_key(int(parts[0]), parts[1], int(parts[2]), parts[3], int(parts[4]))
        except (KeyError, ValueError, IndexError, OSError):
            self.errors += 1
            return
        packets = self.ring.get(key)
        if not packets:
            return
        name = ring_key(self.prefix, alert_id)
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.delete(name)
            pipe.rpush(name, *(msgpack.packb(list(p), use_bin_type=True) for p in packets))
            pipe.expire(name, RING_TTL)
            pipe.execute()
            self.saved += 1
        except Exception:
            self.errors += 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
