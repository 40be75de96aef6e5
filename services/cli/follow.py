"""`pktscope read FILE --follow tcp|udp|tls|http,N`: one conversation's payload, both directions, in order.

TCP is put together the way Wireshark's "Follow TCP Stream" does it (packet-tcp.c,
follow_tcp_tap_listener / check_follow_fragments), so the bytes equal `tshark -z
follow,tcp,raw,N`: per direction, the next expected sequence number starts at the first packet's
(after a SYN, one more); a segment at that number is appended, one ahead of it is kept aside
until the gap before it is filled, one behind it contributes only its bytes beyond it
(retransmissions and overlaps: the first copy of a byte wins). When the other side
acknowledges data past a gap, the gap is recorded as "[N bytes missing in capture file]", as
Wireshark writes it. UDP: each datagram's payload, in capture order.

``tls`` and ``http`` follow the TCP stream of that number (the bytes on the wire: TLS records
are not decrypted, HTTP/1 is the TCP payload itself). Segments kept aside are bounded
(MAX_PENDING per direction); beyond that the oldest is dropped and counted.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from .streams import endpoints
from .text import safe

KINDS = ("tcp", "udp", "tls", "http")
MAX_PENDING = 10_000
SEPARATOR = "=" * 67


def parse_follow(spec: str) -> tuple[str, int]:
    """ "tcp,3" -> ("tcp", 3); ValueError with a message saying what is expected."""
    kind, sep, number = spec.partition(",")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ValueError(
            f"--follow takes KIND,N with KIND one of {', '.join(KINDS)} (e.g. tcp,0), not {spec!r}"
        )
    try:
        index = int(number)
    except ValueError:
        raise ValueError(f"--follow {spec!r}: N must be a stream number (tcp.stream / udp.stream)") from None
    if index < 0:
        raise ValueError(f"--follow {spec!r}: N must be 0 or more")
    return kind, index


def _lt(a: int, b: int) -> bool:
    return (a - b) & 0xFFFFFFFF >= 0x80000000


def _gt(a: int, b: int) -> bool:
    return _lt(b, a)


class _Chunk:
    __slots__ = ("server", "seq", "data")

    def __init__(self, server: bool, seq: int, data: bytes) -> None:
        self.server = server
        self.seq = seq
        self.data = data


class Follower:
    """Feed every packet's fields and transport payload; ``segments`` is the stream, in order."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind
        self.proto = "udp" if kind == "udp" else "tcp"
        self.index = index
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.segments: list[tuple[bool, bytes]] = []  # (from server, data)
        self._seq = [0, 0]  # next expected relative sequence number per direction (0: not yet)
        self._base: list[int | None] = [None, None]  # Wireshark's base_seq per direction
        self._written = [0, 0]
        self._pending: list[list[_Chunk]] = [[], []]
        self.dropped = 0

    def add(self, fields: dict[str, Any], payload: bytes | None) -> None:
        layer = fields.get(self.proto)
        if not isinstance(layer, dict) or layer.get("stream") != self.index:
            return
        ends = endpoints(fields, self.proto)
        if ends is None:
            return
        if self.client is None:
            self.client, self.server = ends
        is_server = ends[0] != self.client
        if self.proto == "udp":
            if payload:
                self.segments.append((is_server, bytes(payload)))
            return
        self._tcp(layer, payload or b"", is_server)

    def _tcp(self, tcp: dict[str, Any], payload: bytes, is_server: bool) -> None:
        d = 1 if is_server else 0
        other = 1 - d
        flags = tcp["flags"]["value"]
        # Wireshark compares relative sequence numbers: the base is a SYN's number (any SYN
        # re-bases), else one less than the direction's first packet's; acks are relative to
        # the other direction's base once it has one.
        raw_seq = tcp.get("seq_raw", tcp["seq"])  # the wire number: `seq` is relative
        if flags & 0x02:
            self._base[d] = raw_seq
        elif self._base[d] is None:
            self._base[d] = (raw_seq - 1) & 0xFFFFFFFF
        seq = (raw_seq - self._base[d]) & 0xFFFFFFFF
        length = tcp.get("len", len(payload))
        if flags & 0x02:
            seq = (seq + 1) & 0xFFFFFFFF
        if self._pending[other]:
            ack = tcp.get("ack", 0)
            if flags & 0x10 and self._base[other] is not None:
                ack = (ack - self._base[other]) & 0xFFFFFFFF
            while self._check(other, ack, True):
                pass
        if self._written[d] == 0 and self._seq[d] == 0:
            self._seq[d] = seq
        expected = self._seq[d]
        data = payload
        if _lt(seq, expected):
            nextseq = (seq + length) & 0xFFFFFFFF
            if _gt(nextseq, expected):
                offset = (expected - seq) & 0xFFFFFFFF
                data = data[offset:] if len(data) > offset else b""
                seq = expected
                length = (nextseq - expected) & 0xFFFFFFFF
        if not data or _lt(seq, expected):
            return
        if seq == expected:
            self._seq[d] = (expected + length) & 0xFFFFFFFF
            self._written[d] += len(data)
            self.segments.append((is_server, bytes(data)))
            while self._check(d, 0, False):
                pass
        else:
            pending = self._pending[d]
            if len(pending) >= MAX_PENDING:
                pending.pop(0)
                self.dropped += 1
            pending.append(_Chunk(is_server, seq, bytes(data)))

    def _check(self, d: int, acknowledged: int, use_ack: bool) -> bool:
        """Wireshark's check_follow_fragments: place one kept-aside segment, if one fits now."""
        pending = self._pending[d]
        if not pending:
            return False
        expected = self._seq[d]
        lowest = pending[0].seq
        for i, chunk in enumerate(pending):
            if _gt(lowest, chunk.seq):
                lowest = chunk.seq
            if _lt(chunk.seq, expected):
                newseq = (chunk.seq + len(chunk.data)) & 0xFFFFFFFF
                if _gt(newseq, expected):
                    new_pos = (expected - chunk.seq) & 0xFFFFFFFF
                    if len(chunk.data) > new_pos:
                        self.segments.append((chunk.server, chunk.data[new_pos:]))
                    self._seq[d] = (expected + len(chunk.data) - new_pos) & 0xFFFFFFFF
                del pending[i]
                return True
            if chunk.seq == expected:
                if chunk.data:
                    self.segments.append((chunk.server, chunk.data))
                self._seq[d] = (expected + len(chunk.data)) & 0xFFFFFFFF
                del pending[i]
                return True
        if use_ack and _gt(acknowledged, lowest):
            missing = (lowest - expected) & 0xFFFFFFFF
            if missing >= 0x80000000:
                missing -= 1 << 32
            note = f"[{missing} bytes missing in capture file]".encode() + b"\0"
            self.segments.append((d == 1, note))
            self._seq[d] = lowest
            return True
        return False

    def merged(self) -> list[tuple[bool, bytes]]:
        """Consecutive segments of one direction joined (what a reader sees as one turn)."""
        out: list[tuple[bool, bytes]] = []
        for server, data in self.segments:
            if out and out[-1][0] == server:
                out[-1] = (server, out[-1][1] + data)
            else:
                out.append((server, data))
        return out

    # ---- output
    def write(self, out: TextIO, *, fmt: str = "ascii", as_json: bool = False) -> None:
        if as_json:
            for server, data in self.segments:
                out.write(json.dumps({"from": "server" if server else "client", "data": data.hex()}))
                out.write("\n")
            return
        out.write(f"{SEPARATOR}\nFollow: {self.kind},{fmt}\nFilter: {self.proto}.stream eq {self.index}\n")
        if self.client is not None and self.server is not None:
            out.write(f"Node 0: {_node(self.client)}\nNode 1: {_node(self.server)}\n")
        for server, data in self.segments:
            indent = "\t" if server else ""
            if fmt == "raw":
                out.write(f"{indent}{data.hex()}\n")
            elif fmt == "hex":
                out.write(_hexdump(data, indent))
            else:
                text = _printable(data)
                out.write("".join(f"{indent}{line}\n" for line in text.split("\n")))
        out.write(f"{SEPARATOR}\n")


def _node(end: tuple[str, int]) -> str:
    addr, port = end
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _printable(data: bytes) -> str:
    """Bytes as text with every non-printable byte (but newline and tab) as '.', like tshark's ascii."""
    return "".join(chr(b) if 32 <= b < 127 or b in (9, 10) else "." for b in data).replace("\r", "")


def _hexdump(data: bytes, indent: str) -> str:
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{indent}{off:08X}  {hexes:<47}  {safe(text)}\n")
    return "".join(lines)


def follow_streams(path: str, kind: str, indexes: list[int] | None = None) -> dict[int, Follower]:
    """Follow several streams of one capture in one pass (all of them when ``indexes`` is None)."""
    from services.capture.sources import OfflineSource
    from services.decoder.dissect import dissect

    from .streams import StreamIndex

    proto = "udp" if kind == "udp" else "tcp"
    wanted = None if indexes is None else set(indexes)
    followers: dict[int, Follower] = {}
    streams = StreamIndex()
    source = OfflineSource(path)
    for num, (ts, data) in enumerate(source, 1):
        fields, l4 = dissect(num, ts, source.linktype, len(data), data)
        streams.assign(fields)
        layer = fields.get(proto)
        if not isinstance(layer, dict) or "stream" not in layer:
            continue
        index = layer["stream"]
        if wanted is not None and index not in wanted:
            continue
        follower = followers.get(index)
        if follower is None:
            follower = followers[index] = Follower(kind, index)
        follower.add(fields, l4[7] if l4 is not None else None)
    return followers
