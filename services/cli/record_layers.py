"""TLS records and QUIC packets on every frame that carries them, as Wireshark marks them.

The decoder's AppInspector reads a TLS flow's handshake once and is done with it, and a QUIC
flow's Initial packets only: enough to name the flow. Wireshark's ``tls`` and ``quic`` match
every frame in which a TLS record completes / every QUIC datagram, with each record's
``tls.record.content_type``, ``tls.record.version``, ``tls.handshake.type`` and each QUIC
packet's ``quic.header_form``, ``quic.long.packet_type``, ``quic.version``. This module keeps
that per-frame view for `pktscope read`, apart from the pipeline's hot path.

TCP: each direction's in-order bytes are cut into records; a record is shown on the frame that
completes it (a frame holding only part of a record has no ``tls``). A direction whose bytes
stop looking like TLS records is given up; a sequence gap starts afresh at the next record
header. Retransmitted bytes are not shown again. QUIC: a UDP flow is QUIC once a long-header
packet of a known version is seen, then all its datagrams are marked (short headers too).

Bounded: at most MAX_FLOWS directions / flows are remembered (oldest dropped) and at most
MAX_BUFFER bytes are held per direction (a longer record is skipped over, not held).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from services.decoder.app import tls as tls_parser

MAX_FLOWS = 20_000
MAX_BUFFER = 1 << 16
MAX_RECORD = (1 << 14) + 2048
TLS_CONTENT_TYPES = frozenset((20, 21, 22, 23, 24))
CCS, HANDSHAKE = 20, 22
QUIC_VERSIONS = frozenset((0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF00001C, 0xFF00001B, 0xFF000022))


class _TlsDirection:
    __slots__ = ("buf", "carry", "encrypted", "next_seq", "peer", "seen", "skip", "tls", "tls13")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self.buf = bytearray()
        self.tls: bool | None = None  # None: not yet known
        self.encrypted = False  # a ChangeCipherSpec was sent: later handshake records are opaque
        self.skip = 0  # bytes of an over-long record still to pass over
        self.seen: set[str] = set()  # tls.* keys this direction has shown
        self.carry: dict[str, Any] = {}  # the inspector's fields, for the next frame completing a record
        self.tls13 = False  # TLS 1.3 negotiated: application records are opaque (tls.record.opaque_type)
        self.peer: _TlsDirection | None = None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    size = 1 << (first >> 6)
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[pos + i]
    return value, pos + size


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_H2_FRAME = 1 << 24


class _H2Direction:
    __slots__ = ("buf", "next_seq", "preface")

    def __init__(self, next_seq: int, preface: bool) -> None:
        self.next_seq = next_seq
        self.buf = bytearray()
        self.preface = preface  # the client's connection preface still to pass over


class RecordLayers:
    """Adds ``tls.record`` / ``tls.handshake.type`` and ``quic`` packet fields to packets, in file order."""

    def __init__(self) -> None:
        self.tcp: OrderedDict[tuple, _TlsDirection] = OrderedDict()
        self.quic: OrderedDict[tuple, bool] = OrderedDict()
        self.h2: OrderedDict[tuple, _H2Direction | None] = OrderedDict()

    def add(self, fields: dict[str, Any], l4: tuple) -> None:
        proto, src, dst, sport, dport, flags, seq, payload = l4
        if proto == 6:
            key = (src, dst, sport, dport)
            if payload and (key in self.h2 or payload.startswith(H2_PREFACE[:16])):
                if self.h2.get(key, 0) is None:  # the server side of an HTTP/2 connection
                    self._h2_server(key, seq)
                self._h2(fields, key, seq, payload)
                return
            self._tcp(fields, key, flags, seq, payload)
        elif proto == 17 and payload:
            self._quic(fields, src, dst, sport, dport, payload)

    # --- TLS over TCP ------------------------------------------------------------------------
    def _tcp(self, fields: dict[str, Any], key: tuple, flags: int, seq: int, payload: bytes) -> None:
        state = self.tcp.get(key)
        if flags & 0x02:  # SYN: the stream starts after it
            self._remember(self.tcp, key, _TlsDirection((seq + 1) & 0xFFFFFFFF))
            return
        if not payload:
            return
        if state is None:
            if not _looks_like_record(payload):
                return
            state = _TlsDirection(seq)
            self._remember(self.tcp, key, state)
        if state.tls is False:
            return
        # The inspector reports hello and certificate fields when its own parse completes; here
        # they move to the frame completing a record, as Wireshark shows them (once each)
        found = fields.pop("tls", None)
        if isinstance(found, dict):
            state.carry.update((k, v) for k, v in found.items() if k not in state.seen)
        end = (seq + len(payload)) & 0xFFFFFFFF
        diff = (seq - state.next_seq) & 0xFFFFFFFF
        if diff >= 0x80000000:  # older bytes: a retransmission (or an overlap): not shown again
            over = (end - state.next_seq) & 0xFFFFFFFF
            if over == 0 or over >= 0x80000000:
                return
            payload = payload[len(payload) - over :]
        elif diff:  # a gap: start afresh if this segment starts a record
            state.buf = bytearray()
            state.skip = 0
            if not _looks_like_record(payload):
                state.next_seq = end
                return
        state.next_seq = end
        if state.skip:
            cut = min(state.skip, len(payload))
            state.skip -= cut
            payload = payload[cut:]
        state.buf += payload
        records = []
        buf = state.buf
        pos = 0
        while len(buf) - pos >= 5:
            ctype, major, minor, length = buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3] << 8 | buf[pos + 4]
            if ctype not in TLS_CONTENT_TYPES or major != 3 or minor > 4 or length > MAX_RECORD:
                state.tls = False  # not (or no longer) TLS: stop looking at this direction
                state.buf = bytearray()
                break
            state.tls = True
            if len(buf) - pos - 5 < length:
                if length + 5 > MAX_BUFFER:
                    state.skip = length + 5 - (len(buf) - pos)
                    pos = len(buf)
                break
            body = bytes(buf[pos + 5 : pos + 5 + length])
            records.append((ctype, major << 8 | minor, length, body))
            pos += 5 + length
        if state.tls is not False:
            del buf[:pos]
            if len(buf) > MAX_BUFFER:
                state.tls = False
                state.buf = bytearray()
        if records:
            if state.peer is None:
                state.peer = self.tcp.get((key[1], key[0], key[3], key[2]))
                if state.peer is not None:
                    state.peer.peer = state
            self._mark_tls(fields, state, records)

    def _mark_tls(self, fields: dict[str, Any], state: _TlsDirection, records: list) -> None:
        node = fields.get("tls")
        if isinstance(node, list):
            node = node[0] if node and isinstance(node[0], dict) else None
        if not isinstance(node, dict):
            node = {}
            fields["tls"] = node
        rec_nodes = []
        hs_types: list[int] = []
        hs_versions: list[int] = []
        for ctype, version, length, body in records:
            tls13 = state.tls13 or (state.peer is not None and state.peer.tls13)
            if ctype == 23 and tls13:  # TLS 1.3 hides the real type: Wireshark's opaque_type
                rec_nodes.append({"opaque_type": ctype, "version": version, "length": length})
            else:
                rec_nodes.append({"content_type": ctype, "version": version, "length": length})
            if ctype == CCS:
                state.encrypted = True
            elif ctype == HANDSHAKE and not state.encrypted:
                pos = 0
                while pos + 4 <= len(body):
                    htype = body[pos]
                    hlen = int.from_bytes(body[pos + 1 : pos + 4], "big")
                    hs_types.append(htype)
                    if htype in (1, 2) and pos + 6 <= len(body):
                        hs_versions.append(body[pos + 4] << 8 | body[pos + 5])
                    if htype == 2 and pos + 4 + hlen <= len(body):
                        try:
                            hello_s, is_13 = tls_parser._server_hello(body[pos + 4 : pos + 4 + hlen])
                            state.tls13 = state.tls13 or is_13
                            node.update((k[4:], v) for k, v in hello_s.items() if k.startswith("tls."))
                        except Exception:  # noqa: BLE001 -- a malformed ServerHello shows its record only
                            pass
                    if htype == 1 and pos == 0:
                        # every ClientHello shows its fields, a repeated one too (the pipeline's
                        # inspector reads a connection's first only)
                        record = bytes((ctype, version >> 8, version & 0xFF, length >> 8, length & 0xFF)) + body
                        hello, status = tls_parser.parse_client(record)
                        if status == tls_parser.DONE:
                            node.update((k[4:], v) for k, v in hello.items() if k.startswith("tls."))
                    pos += 4 + hlen
        node["record"] = rec_nodes
        state.seen.update(node)
        if state.carry:
            for key, value in state.carry.items():
                if key not in state.seen:
                    node[key] = value
                    state.seen.add(key)
            state.carry = {}
        if hs_types:
            hs = node.setdefault("handshake", {})
            if isinstance(hs, dict):
                hs["type"] = hs_types
                if hs_versions:
                    hs["version"] = hs_versions

    # --- HTTP/2 in clear (prior knowledge: the client's preface opens the connection) ---------
    def _h2(self, fields: dict[str, Any], key: tuple, seq: int, payload: bytes) -> None:
        state = self.h2.get(key)
        if state is None:
            if key in self.h2:
                return
            state = _H2Direction(seq, True)
            self._remember(self.h2, key, state)
            back = (key[1], key[0], key[3], key[2])
            if back not in self.h2:
                self._remember(self.h2, back, None)  # the server's side: set up on its first bytes
        if state is None:
            return
        if seq != state.next_seq:
            return  # out of order or a gap: frames cannot be found reliably any more
        state.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        buf = state.buf
        buf += payload
        pos = 0
        types: list[int] = []
        streams: list[int] = []
        if state.preface:
            if len(buf) < len(H2_PREFACE):
                return
            state.preface = False
            pos = len(H2_PREFACE)
            fields.setdefault("http2", {})["magic"] = True
        while len(buf) - pos >= 9:
            length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
            if len(buf) - pos - 9 < length:
                break
            types.append(buf[pos + 3])
            streams.append(int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF)
            pos += 9 + length
        del buf[:pos]
        if len(buf) > MAX_BUFFER:
            state.buf = bytearray()
        if types:
            node = fields.setdefault("http2", {})
            node["type"] = types
            node["streamid"] = streams
        http = fields.get("http")
        if http is not None and "http2" in fields:
            # Wireshark names the headers of an HTTP/2 stream http2.headers.*
            first = http[0] if isinstance(http, list) and http else http
            if isinstance(first, dict):
                names = {"method": "method", "uri": "path", "host": "authority", "status": "status"}
                fields["http2"]["headers"] = {n: first[k] for k, n in names.items() if k in first}

    def _h2_server(self, key: tuple, seq: int) -> None:
        self._remember(self.h2, key, _H2Direction(seq, False))

    # --- QUIC ----------------------------------------------------------------------------------
    def _quic(self, fields: dict[str, Any], src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> None:
        key = (src, sport, dst, dport) if (src, sport) <= (dst, dport) else (dst, dport, src, sport)
        first = payload[0]
        known = key in self.quic
        if not known:
            if not (first & 0xC0 == 0xC0 and len(payload) >= 7):
                return
            version = int.from_bytes(payload[1:5], "big")
            if version not in QUIC_VERSIONS:
                return
            self._remember(self.quic, key, True)
        packets = _quic_packets(payload)
        if not packets:
            return
        node = fields.get("quic")
        if isinstance(node, list):
            node = node[0] if node and isinstance(node[0], dict) else None
        if not isinstance(node, dict):
            node = {}
            fields["quic"] = node
        node["header_form"] = [p[0] for p in packets]
        longs = [p for p in packets if p[0]]
        if longs:
            node["long"] = {"packet_type": [p[1] for p in longs]}
            node.setdefault("version", longs[0][2])

    def _remember(self, table: OrderedDict, key: tuple, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > MAX_FLOWS:
            table.popitem(last=False)


def _looks_like_record(payload: bytes) -> bool:
    return (
        len(payload) >= 5
        and payload[0] in TLS_CONTENT_TYPES
        and payload[1] == 3
        and payload[2] <= 4
        and (payload[3] << 8 | payload[4]) <= MAX_RECORD
    )


def _quic_packets(data: bytes) -> list[tuple[int, int, int]]:
    """(header form, long packet type, version) of each QUIC packet coalesced in a datagram."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    try:
        while pos < len(data) and len(out) < 8:
            first = data[pos]
            if not first & 0x80:
                out.append((0, 0, 0))  # a short header runs to the end of the datagram
                break
            version = int.from_bytes(data[pos + 1 : pos + 5], "big")
            ptype = (first >> 4) & 3
            if version == 0x6B3343CF:  # QUIC v2 numbers its packet types differently
                ptype = (ptype - 1) & 3
            out.append((1, ptype, version))
            p = pos + 5
            dcid_len = data[p]
            p += 1 + dcid_len
            scid_len = data[p]
            p += 1 + scid_len
            if ptype == 3 or version == 0:  # Retry / version negotiation: the rest of the datagram
                break
            if ptype == 0:
                token_len, p = _varint(data, p)
                p += token_len
            length, p = _varint(data, p)
            pos = p + length
    except IndexError:
        pass
    return out
