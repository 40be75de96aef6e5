"""Which frame an HTTP/1 message belongs to: the one that completes it, body included (Wireshark).

The AppInspector reports a message as soon as its headers are complete: that is what the
pipeline needs to name a flow. Wireshark reassembles the body too (Content-Length, chunked, or
up to the end of the connection) and shows the message on the frame that completes it; frames
before that are bare TCP. This tracker follows each direction's in-order bytes, finds where
each message ends, and moves the inspector's ``http`` node from the header frame to the
completing frame. A message that never completes (the capture ends first, or its framing is
broken) is not shown, as in Wireshark.

Bounded: MAX_FLOWS directions (oldest dropped), header bytes held per direction MAX_HEADER.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

MAX_FLOWS = 20_000
MAX_HEADER = 1 << 16
MAX_PENDING = 64
_REQUEST_LINE = re.compile(rb"^[A-Z][A-Z_-]{1,19} \S+ HTTP/1\.[019]\r?\n", re.ASCII)
_STATUS_LINE = re.compile(rb"^HTTP/1\.\d+ \d{3}", re.ASCII)
_CONTENT_LENGTH = re.compile(rb"\r?\ncontent-length:[ \t]*(\d+)[ \t]*\r?\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r?\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)  # a prefix, as Wireshark reads it
_HEADERS_END = re.compile(rb"\r?\n\r?\n")

# Wireshark's default TCP ports of its HTTP dissector
HTTP_PORTS = frozenset((80, 1900, 2710, 2869, 3128, 3132, 5985, 8080, 8088, 11371))

HEADERS, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, TO_CLOSE, BROKEN = range(7)


class _Direction:
    __slots__ = ("buf", "is_request", "methods", "next_seq", "pending", "remaining", "state")

    def __init__(self, next_seq: int, is_request: bool) -> None:
        self.next_seq = next_seq
        self.is_request = is_request
        self.buf = bytearray()
        self.state = HEADERS
        self.remaining = 0
        self.pending: list[Any] = []  # the inspector's nodes, header frame first, awaiting completion
        self.methods: list[bytes] = []  # requests' methods (a HEAD response has no body)


class HttpFrames:
    """Moves each packet's ``http`` node to the frame completing the message, in file order."""

    def __init__(self) -> None:
        self.dirs: OrderedDict[tuple, _Direction] = OrderedDict()

    def add(self, fields: dict[str, Any], l4: tuple) -> None:
        proto, src, dst, sport, dport, flags, seq, payload = l4
        if proto != 6:
            return
        key = (src, dst, sport, dport)
        state = self.dirs.get(key)
        if state is None:
            if not payload or not (_REQUEST_LINE.match(payload) or _STATUS_LINE.match(payload)):
                if payload[:1] in (b"\r", b"\n") and "http" in fields and key not in self.dirs:
                    # a message the inspector found after leading junk: to Wireshark this frame
                    # is a continuation of something else, not a request or response (an
                    # "http" layer without either on its HTTP ports)
                    fields.pop("http")
                    if sport in HTTP_PORTS or dport in HTTP_PORTS:
                        fields["http"] = {}
                return
            state = _Direction(seq, bool(_REQUEST_LINE.match(payload)))
            self.dirs[key] = state
            if len(self.dirs) > MAX_FLOWS:
                self.dirs.popitem(last=False)
        node = fields.pop("http", None) if state.state != BROKEN else None
        if node is not None:
            state.pending.extend(node if isinstance(node, list) else [node])
            del state.pending[:-MAX_PENDING]
        done: list[Any] = []
        if payload and state.state != BROKEN:
            if flags & 0x02:  # data on a SYN (TCP Fast Open): the SYN takes one sequence number
                state.next_seq = seq = (seq + 1) & 0xFFFFFFFF
            if seq == state.next_seq:
                state.next_seq = (seq + len(payload)) & 0xFFFFFFFF
                self._feed(state, self.dirs.get((dst, src, dport, sport)), bytes(payload), done)
            elif (seq - state.next_seq) & 0xFFFFFFFF < 0x80000000:
                state.state = BROKEN  # a gap: Wireshark cannot complete the message either
        if flags & 0x05 and state.state == TO_CLOSE:  # FIN/RST ends a body read to the close
            done.append(True)
            state.state = HEADERS
        shown = []
        for _ in done:
            if state.pending:
                shown.append(state.pending.pop(0))
        if shown:
            fields["http"] = shown[0] if len(shown) == 1 else shown

    def _feed(self, state: _Direction, peer: _Direction | None, data: bytes, done: list) -> None:
        buf = state.buf
        buf += data
        pos = 0
        for _ in range(256):
            if state.state == HEADERS:
                m = _HEADERS_END.search(buf, pos)
                if m is None:
                    if len(buf) - pos > MAX_HEADER:
                        state.state = BROKEN
                    break
                head = bytes(buf[pos : m.end()])
                pos = m.end()
                self._start_body(state, peer, head, done)
            elif state.state == BODY:
                take = min(state.remaining, len(buf) - pos)
                pos += take
                state.remaining -= take
                if state.remaining:
                    break
                done.append(True)
                state.state = HEADERS
            elif state.state == CHUNK_SIZE:
                end = buf.find(b"\n", pos)
                if end < 0:
                    break
                size_text = bytes(buf[pos:end]).split(b";")[0].strip()
                pos = end + 1
                try:
                    size = int(size_text, 16)
                except ValueError:  # Wireshark shows the message with what it has and moves on
                    done.append(True)
                    state.state = BROKEN
                    break
                if size == 0:
                    state.state = TRAILERS
                else:
                    state.state = CHUNK_DATA
                    state.remaining = size + 2  # the data and its CRLF
            elif state.state == CHUNK_DATA:
                take = min(state.remaining, len(buf) - pos)
                pos += take
                state.remaining -= take
                if state.remaining:
                    break
                state.state = CHUNK_SIZE
            elif state.state == TRAILERS:
                end = buf.find(b"\n", pos)
                if end < 0:
                    break
                line = bytes(buf[pos:end]).strip()
                pos = end + 1
                if not line:
                    done.append(True)
                    state.state = HEADERS
            else:  # TO_CLOSE, BROKEN: the bytes are body, nothing to find
                pos = len(buf)
                break
            if pos >= len(buf):
                break
        del buf[:pos]

    def _start_body(self, state: _Direction, peer: _Direction | None, head: bytes, done: list) -> None:
        if state.is_request:
            state.methods.append(head.split(b" ", 1)[0])
            del state.methods[:-MAX_PENDING]
        chunked = _CHUNKED.search(head)
        length = _CONTENT_LENGTH.search(head)
        if not state.is_request:
            code = head.split(b" ", 2)[1][:3] if head.count(b" ") >= 1 else b""
            method = peer.methods.pop(0) if peer is not None and peer.methods else b""
            if method == b"HEAD" or code[:1] == b"1" or code in (b"204", b"304"):
                done.append(True)
                return
            if method == b"CONNECT" and code[:1] == b"2":  # a tunnel follows: no more HTTP here
                done.append(True)
                state.state = BROKEN
                if peer is not None:
                    peer.state = BROKEN
                return
            if chunked:
                state.state = CHUNK_SIZE
            elif length:
                state.remaining = int(length.group(1))
                state.state = BODY if state.remaining else HEADERS
                if not state.remaining:
                    done.append(True)
            else:
                state.state = TO_CLOSE
            return
        if chunked:
            state.state = CHUNK_SIZE
        elif length and int(length.group(1)):
            state.remaining = int(length.group(1))
            state.state = BODY
        else:
            done.append(True)
