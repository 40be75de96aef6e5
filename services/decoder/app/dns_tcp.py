"""DNS over TCP: a 2-byte length before each message, several messages per stream."""

from __future__ import annotations

import struct
from collections import Counter

from services.decoder.app.dns import DnsError, parse_message

_LEN = struct.Struct("!H")


class DnsTcpSide:
    """One direction's messages; ``feed`` returns their field dicts, a gap ends the direction."""

    __slots__ = ("buf", "counters", "finished")

    def __init__(self, counters: Counter) -> None:
        self.counters = counters
        self.buf = bytearray()
        self.finished = False

    def gap(self, size: int) -> None:
        self.counters["dns_tcp_gap_gave_up"] += 1
        self.finished = True
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        if self.finished:
            return []
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= 2:
            size = _LEN.unpack_from(buf, 0)[0]
            if size < 12:
                self.counters["dns_tcp_bad_length"] += 1
                self.finished = True
                self.buf = bytearray()
                break
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            try:
                out.append(parse_message(msg, self.counters))
            except (DnsError, struct.error, IndexError, ValueError):
                self.counters["dns_parse_errors"] += 1
        return out
