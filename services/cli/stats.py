"""`pktscope read FILE --stats`: protocol hierarchy, top talkers and conversations, throughput.

The hierarchy is built like `tshark -z io,phs`: each packet's layers in order (frame.protocols
without the "ethertype" step, which Wireshark does not count as a layer), plus the application
protocol the inspector recognised in that packet (dns, http, tls, quic, http2); every node counts
the frames that went through it and their wire bytes (frame.len). Layers up to the transport
agree with tshark frame for frame; an application node counts the packets in which pktscope
decoded that protocol's fields (a TLS handshake message, a whole HTTP head), which can be fewer
than the frames tshark marks (every TLS record).

Talkers are IP addresses (bytes sent + received); conversations are transport conversations
(protocol, both endpoints, bytes each way). Throughput is per ``interval`` seconds from the
first matching packet. Memory is bounded: at most MAX_KEYS talkers / conversations / bins are
kept (more are summed under "other").
"""

from __future__ import annotations

import json
import math
from typing import Any, TextIO

from .text import safe

APP_LAYERS = ("http2", "http", "tls", "quic", "dns")
SKIPPED_LAYERS = frozenset(("ethertype",))
MAX_KEYS = 100_000
OTHER = "other"


class _Node:
    __slots__ = ("children", "frames", "bytes")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.frames = 0
        self.bytes = 0


# DNS on these ports is named as Wireshark names it
DNS_PORT_NAMES = {53: "dns", 5353: "mdns", 5355: "llmnr"}


def layer_path(fields: dict[str, Any]) -> list[str]:
    """The packet's layers for the hierarchy, outermost first."""
    protos = fields.get("frame", {}).get("protocols", "")
    path = [p for p in protos.split(":") if p and p not in SKIPPED_LAYERS]
    app = next((name for name in APP_LAYERS if name in fields), None)
    udp = fields.get("udp")
    if (app is None or app == "dns") and isinstance(udp, dict) and path and path[-1] == "udp":
        # like Wireshark's port table: a DNS port's payload is DNS even when it does not parse
        ports = (udp.get("srcport"), udp.get("dstport"))
        named = next(
            (DNS_PORT_NAMES[p] for p in sorted(ports) if p in DNS_PORT_NAMES), None
        )  # low port first
        if named is not None and (app == "dns" or udp.get("length", 0) > 8):
            app = named
    if app is not None and app not in path:
        path.append(app)
    return path


class CaptureStats:
    """Feed matching packets with ``add``; ``result()`` / ``write()`` give the statistics."""

    def __init__(self, interval: float = 1.0, top: int = 10) -> None:
        if not interval > 0 or math.isinf(interval):
            raise ValueError("--interval must be a positive number of seconds")
        if top < 1:
            raise ValueError("--top must be 1 or more")
        self.interval = float(interval)
        self.top = top
        self.root = _Node()
        self.talkers: dict[str, list[int]] = {}  # addr -> [frames, bytes sent, bytes received]
        self.conversations: dict[
            tuple, list[int]
        ] = {}  # (proto, a, b) -> [frames a->b, bytes, frames b->a, bytes]
        self.bins: dict[int, list[int]] = {}  # bin index -> [frames, bytes]
        self.first: float | None = None
        self.last: float | None = None
        self.frames = 0
        self.bytes = 0

    def add(self, fields: dict[str, Any], _l4: Any = None) -> None:
        frame = fields.get("frame", {})
        size = int(frame.get("len", 0))
        ts = float(frame.get("time_epoch", 0.0))
        self.frames += 1
        self.bytes += size
        if self.first is None:
            self.first = ts
        self.last = ts if self.last is None else max(self.last, ts)
        node = self.root
        node.frames += 1
        node.bytes += size
        for layer in layer_path(fields):
            child = node.children.get(layer)
            if child is None:
                child = node.children[layer] = _Node()
            child.frames += 1
            child.bytes += size
            node = child
        index = int((ts - self.first) // self.interval) if ts >= self.first else 0
        slot = self.bins.get(index)
        if slot is None:
            if len(self.bins) >= MAX_KEYS:
                index = max(self.bins)
                slot = self.bins[index]
            else:
                slot = self.bins[index] = [0, 0]
        slot[0] += 1
        slot[1] += size
        ip = fields.get("ip") or fields.get("ipv6")
        if isinstance(ip, dict) and "src" in ip and "dst" in ip:
            self._talk(ip["src"], size, 1)
            self._talk(ip["dst"], size, 2)
            self._conversation(fields, ip, size)

    def _talk(self, addr: str, size: int, slot: int) -> None:
        entry = self.talkers.get(addr)
        if entry is None:
            if len(self.talkers) >= MAX_KEYS:
                addr = OTHER
            entry = self.talkers.setdefault(addr, [0, 0, 0])
        if slot == 1:
            entry[0] += 1
        entry[slot] += size

    def _conversation(self, fields: dict[str, Any], ip: dict[str, Any], size: int) -> None:
        proto = "ip"
        src, dst = ip["src"], ip["dst"]
        for name in ("tcp", "udp"):
            layer = fields.get(name)
            if isinstance(layer, dict) and "srcport" in layer:
                proto = name
                src = _endpoint(src, layer["srcport"])
                dst = _endpoint(dst, layer["dstport"])
                break
        forward = src <= dst
        key = (proto, src, dst) if forward else (proto, dst, src)
        entry = self.conversations.get(key)
        if entry is None:
            if len(self.conversations) >= MAX_KEYS:
                key = (OTHER, "", "")
            entry = self.conversations.setdefault(key, [0, 0, 0, 0])
        base = 0 if forward else 2
        entry[base] += 1
        entry[base + 1] += size

    # ---- results
    def hierarchy(self) -> list[dict[str, Any]]:
        """Depth-first rows {"protocol", "path", "depth", "frames", "bytes"}, busiest first."""
        rows: list[dict[str, Any]] = []

        def walk(node: _Node, path: list[str]) -> None:
            for name, child in sorted(node.children.items(), key=lambda kv: (-kv[1].frames, kv[0])):
                here = [*path, name]
                rows.append(
                    {
                        "protocol": name,
                        "path": ":".join(here),
                        "depth": len(path),
                        "frames": child.frames,
                        "bytes": child.bytes,
                    }
                )
                walk(child, here)

        walk(self.root, [])
        return rows

    def result(self) -> dict[str, Any]:
        talkers = sorted(self.talkers.items(), key=lambda kv: (-(kv[1][1] + kv[1][2]), kv[0]))
        convs = sorted(self.conversations.items(), key=lambda kv: (-(kv[1][1] + kv[1][3]), kv[0]))
        duration = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        bins = []
        for index in sorted(self.bins):
            frames, size = self.bins[index]
            bins.append(
                {
                    "start": round(index * self.interval, 6),
                    "frames": frames,
                    "bytes": size,
                    "bits_per_second": round(size * 8 / self.interval, 3),
                }
            )
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "duration": round(duration, 6),
            "protocols": self.hierarchy(),
            "top_talkers": [
                {"address": a, "bytes": s + r, "bytes_sent": s, "bytes_received": r, "frames_sent": f}
                for a, (f, s, r) in talkers[: self.top]
            ],
            "top_conversations": [
                {
                    "proto": p,
                    "a": a,
                    "b": b,
                    "bytes": ab + ba,
                    "frames_a_to_b": fa,
                    "bytes_a_to_b": ab,
                    "frames_b_to_a": fb,
                    "bytes_b_to_a": ba,
                }
                for (p, a, b), (fa, ab, fb, ba) in convs[: self.top]
            ],
            "throughput": {"interval": self.interval, "bins": bins},
        }

    def write(self, out: TextIO, *, as_json: bool = False) -> None:
        res = self.result()
        if as_json:
            out.write(json.dumps(res) + "\n")
            return
        w = out.write
        w("=" * 67 + "\nProtocol Hierarchy Statistics\n\n")
        for row in res["protocols"]:
            label = "  " * row["depth"] + row["protocol"]
            w(f"{safe(label):<40} frames:{row['frames']} bytes:{row['bytes']}\n")
        w("=" * 67 + f"\nTop talkers (by bytes; {res['frames']} frames, {res['bytes']} bytes)\n")
        for t in res["top_talkers"]:
            w(
                f"  {safe(t['address']):<40} {t['bytes']:>12} B  sent {t['bytes_sent']} B  received {t['bytes_received']} B\n"
            )
        w("=" * 67 + "\nTop conversations (by bytes)\n")
        for c in res["top_conversations"]:
            w(
                f"  {c['proto']:<4} {safe(c['a'])} <-> {safe(c['b'])}  {c['bytes']} B"
                f"  ({c['frames_a_to_b']}p/{c['bytes_a_to_b']}B -> , <- {c['frames_b_to_a']}p/{c['bytes_b_to_a']}B)\n"
            )
        w("=" * 67 + f"\nThroughput per {self.interval:g} s\n")
        for b in res["throughput"]["bins"]:
            w(
                f"  {b['start']:>12.3f}  {b['frames']:>8} frames  {b['bytes']:>10} B  {b['bits_per_second']:>14.1f} bit/s\n"
            )
        w("=" * 67 + "\n")


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
