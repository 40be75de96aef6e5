"""Cleartext HTTP/2 (prior knowledge or ``Upgrade: h2c``): header blocks to http.* fields.

Frames are read per direction; DATA and other payloads are skipped without buffering. HEADERS,
PUSH_PROMISE and their CONTINUATION frames are joined (bounded) and decoded with one
``hpack.Decoder`` per direction, so the dynamic tables stay in step with the peers. An hpack
error or an oversized header block ends decoding of that direction (counted): without the
dynamic table later blocks cannot be read.
"""

from __future__ import annotations

import struct
from collections import Counter

import hpack

from services.decoder.app.http_text import normalise_host, text

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BLOCK = 65536  # bytes of one header block (HEADERS + CONTINUATIONs)
MAX_BUFFER = MAX_BLOCK + 9

_FRAME = struct.Struct("!HBBBI")  # length (24 bits as H + B), type, flags, stream id
_DATA, _HEADERS, _SETTINGS, _PUSH_PROMISE, _CONTINUATION = 0, 1, 4, 5, 9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_SETTING = struct.Struct("!HI")


class H2Direction:
    """Frames of one direction of an HTTP/2 connection."""

    __slots__ = ("block", "buf", "counters", "dead", "decoder", "need_preface", "peer", "skip")

    def __init__(self, counters: Counter, need_preface: bool) -> None:
        self.counters = counters
        self.buf = bytearray()
        self.need_preface = need_preface
        self.decoder = hpack.Decoder()
        self.block: bytearray | None = None  # header block awaiting CONTINUATION
        self.skip = 0  # payload bytes of a frame being skipped
        self.dead = False
        self.peer: H2Direction | None = None  # the other direction (its SETTINGS size our table)

    @property
    def finished(self) -> bool:
        return self.dead

    def gap(self, size: int) -> None:
        """Missing bytes: skip them inside a skipped payload, else the framing is lost."""
        if self.skip and size <= self.skip and not self.buf:
            self.skip -= size
            return
        self.counters["http2_gap_lost"] += 1
        self.dead = True
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        if self.dead:
            return []
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return []
            data = data[self.skip :]
            self.skip = 0
        self.buf += data
        out: list = []
        try:
            self._frames(out)
        except Exception as exc:  # hpack raises several error types for hostile blocks
            self.counters["http2_hpack_errors"] += 1
            self.counters[f"http2_error_{type(exc).__name__}"] += 1
            self.dead = True
            self.buf = bytearray()
        return out

    def _frames(self, out: list) -> None:
        buf = self.buf
        if self.need_preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    self._lose("http2_bad_preface")
                return
            if buf[: len(PREFACE)] != PREFACE:
                self._lose("http2_bad_preface")
                return
            del buf[: len(PREFACE)]
            self.need_preface = False
        pos = 0
        n = len(buf)
        while n - pos >= 9:
            hi, lo, ftype, flags, sid = _FRAME.unpack_from(buf, pos)
            length = (hi << 8) | lo
            sid &= 0x7FFFFFFF
            if ftype == _DATA or ftype not in (_HEADERS, _SETTINGS, _PUSH_PROMISE, _CONTINUATION):
                if self.block is not None:
                    self._lose("http2_interleaved_continuation")
                    return
                avail = n - pos - 9
                if avail < length:
                    self.skip = length - avail
                    pos = n
                    break
                pos += 9 + length
                continue
            if length > MAX_BLOCK:
                self._lose("http2_block_too_large")
                return
            if n - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if ftype == _SETTINGS:
                self._settings(payload, flags)
                continue
            if ftype == _CONTINUATION:
                if self.block is None:
                    self.counters["http2_stray_continuation"] += 1
                    continue
                self.block += payload
            else:
                if self.block is not None:
                    self._lose("http2_interleaved_continuation")
                    return
                self.block = bytearray(_fragment(payload, flags, ftype == _PUSH_PROMISE))
            if len(self.block) > MAX_BLOCK:
                self._lose("http2_block_too_large")
                return
            if flags & _END_HEADERS:
                block = bytes(self.block)
                self.block = None
                fields = _fields(self.decoder.decode(block, raw=True))
                if fields and ftype != _PUSH_PROMISE:
                    out.append(fields)
        del buf[:pos]
        if len(buf) > MAX_BUFFER:
            self._lose("http2_buffer_bound")

    def _settings(self, payload: bytes, flags: int) -> None:
        """SETTINGS_HEADER_TABLE_SIZE from this side bounds the table the peer's encoder uses."""
        if flags & 0x1 or self.peer is None:
            return
        for off in range(0, len(payload) - 5, 6):
            ident, value = _SETTING.unpack_from(payload, off)
            if ident == 1:
                self.peer.decoder.max_allowed_table_size = min(value, 1 << 20)

    def _lose(self, why: str) -> None:
        self.counters[why] += 1
        self.dead = True
        self.buf = bytearray()


def _fragment(payload: bytes, flags: int, push: bool) -> bytes:
    """The header block fragment of a HEADERS/PUSH_PROMISE payload (padding, priority removed)."""
    start = 0
    end = len(payload)
    if flags & _PADDED:
        if not payload:
            raise ValueError("padded frame without pad length")
        end -= payload[0]
        start = 1
    if push:
        start += 4
    elif flags & _PRIORITY:
        start += 5
    if end < start:
        raise ValueError("padding longer than the frame")
    return payload[start:end]


def _fields(headers) -> dict:
    """Decoded header list to http.* fields."""
    fields: dict = {}
    host = None
    for name, value in headers:
        if name == b":method":
            fields["http.method"] = text(value)
        elif name == b":path":
            fields["http.uri"] = text(value)
        elif name == b":authority":
            host = value
        elif name == b"host":
            if host is None:
                host = value
        elif name == b":status":
            if value[:3].isdigit():
                fields["http.status"] = int(value[:3])
        elif name == b"user-agent":
            fields["http.user_agent"] = text(value)
        elif name == b"content-type":
            fields["http.content_type"] = text(value)
    if host is not None:
        fields["http.host"] = normalise_host(text(host))
    if fields:
        fields["http.version"] = "HTTP/2"
    return fields


def new_connection(counters: Counter, client_preface: bool) -> tuple[H2Direction, H2Direction]:
    """(client->server, server->client) directions; the client sends the preface first."""
    c2s = H2Direction(counters, client_preface)
    s2c = H2Direction(counters, False)
    c2s.peer = s2c
    s2c.peer = c2s
    return c2s, s2c
