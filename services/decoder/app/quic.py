"""QUIC: the ClientHello carried in a flow's client Initial packets (SNI, ALPN, JA4).

One ``QuicFlow`` per UDP flow. ``feed`` walks the long-header packets coalesced in each
datagram; client Initial packets of the versions in ``quic_crypto.VERSIONS`` (v1, v2, late
drafts) are decrypted with keys derived from the client's Destination Connection ID, their
CRYPTO frames are put back in order by offset (browsers scatter and reorder them, and a
post-quantum ClientHello spans several packets), and once the ClientHello is complete its
fields are returned, once, under ``quic.*`` keys (never ``tls.*``: those are TLS-over-TCP).

Bounded everywhere (CRYPTO bytes, derived keys, decryption failures) and exception-free:
problems are counted in ``counters`` and the flow is given up (``done``) when hopeless.
"""

from __future__ import annotations

import re
import struct
from collections import Counter

from services.decoder.app import tls
from services.decoder.app.fingerprints import ja3, md5_hex
from services.decoder.app.quic_crypto import VERSIONS, InitialKeys, VersionParams, initial_keys, unprotect

counters: Counter = Counter()  # parse problems, for the decoder's stats

MAX_CRYPTO = 64 * 1024  # CRYPTO stream bytes held per flow
MAX_KEYS = 4  # Initial key sets derived per flow (first DCID, after Retry, v1->v2 switch)
MAX_CHUNKS = 1024  # CRYPTO frames held per flow (each costs a dict entry)
MAX_FAILURES = 8  # undecryptable / malformed client Initials before the flow is given up

FRAME_PADDING, FRAME_PING, FRAME_ACK, FRAME_ACK_ECN, FRAME_CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
FRAME_CLOSE, FRAME_CLOSE_APP = 0x1C, 0x1D

_U32 = struct.Struct("!I")
_NONZERO = re.compile(rb"[^\x00]")


def looks_like_quic(datagram: bytes) -> bool:
    """Cheap test for the dispatcher: a long header (form and fixed bits) of a known version."""
    return len(datagram) >= 7 and datagram[0] & 0xC0 == 0xC0 and _U32.unpack_from(datagram, 1)[0] in VERSIONS


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """QUIC variable-length integer at ``pos``: (value, next position). IndexError when cut."""
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        raise IndexError("varint cut short")
    value = first & 0x3F
    for i in range(pos + 1, pos + size):
        value = value << 8 | buf[i]
    return value, pos + size


class QuicFlow:
    """Client Initial decryption and CRYPTO reassembly for one UDP flow."""

    __slots__ = ("chunks", "done", "failures", "held", "key_dcid", "keys", "version")

    def __init__(self) -> None:
        self.version = 0  # QUIC version of the client's first Initial
        self.key_dcid: bytes | None = None  # DCID the client's Initial keys come from
        self.keys: dict[tuple[bytes, int], InitialKeys] = {}
        self.chunks: dict[int, bytes] = {}  # CRYPTO offset -> data
        self.held = 0
        self.failures = 0
        self.done = False  # True once the ClientHello was reported or the flow is hopeless

    def feed(self, datagram: bytes, from_client: bool) -> dict | None:
        """Fields of the ClientHello when this datagram completes it (once), else None."""
        if self.done:
            return None
        try:
            return self._datagram(datagram, from_client)
        except (IndexError, ValueError, struct.error):
            counters["quic_malformed"] += 1
        except Exception as exc:  # never let a decoder bug stop the pipeline
            counters[f"quic_exception_{type(exc).__name__}"] += 1
        self._failed()
        return None

    def _failed(self) -> None:
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            counters["quic_gave_up"] += 1
            self.done = True

    def _datagram(self, d: bytes, from_client: bool) -> dict | None:
        pos = 0
        size = len(d)
        while pos + 7 <= size:
            first = d[pos]
            if not first & 0x80:
                return None  # short header: the rest of the datagram is 1-RTT
            (version,) = _U32.unpack_from(d, pos + 1)
            if version == 0:  # version negotiation: the client will start over elsewhere
                counters["quic_version_negotiation"] += 1
                self.done = not from_client
                return None
            params = VERSIONS.get(version)
            if params is None:
                counters["quic_unknown_version"] += 1
                return None
            p = pos + 5
            dcid_len = d[p]
            dcid = d[p + 1 : p + 1 + dcid_len]
            p += 1 + dcid_len
            scid_len = d[p]
            scid = d[p + 1 : p + 1 + scid_len]
            p += 1 + scid_len
            if dcid_len > 20 or scid_len > 20 or p > size:
                raise ValueError("bad connection id length")
            ptype = (first >> 4) & 0x03
            if ptype == params.retry_type:
                if not from_client:  # new Initial keys from the Retry's SCID; CRYPTO restarts
                    self.key_dcid = bytes(scid)
                    self.chunks.clear()
                    self.held = 0
                return None
            if ptype == params.initial_type:
                token_len, p = read_varint(d, p)
                p += token_len
            length, p = read_varint(d, p)
            end = p + length
            if end > size:
                raise ValueError("packet length beyond datagram")
            if ptype == params.initial_type and from_client:
                fields = self._initial(d[pos:end], p - pos, bytes(dcid), version, params)
                if fields is not None:
                    return fields
                if self.done:
                    return None
            pos = end
        return None

    def _initial(self, packet: bytes, pn_offset: int, dcid: bytes, version: int, params: VersionParams):
        if self.key_dcid is None:
            self.key_dcid = dcid
            self.version = version
        payload = None
        for cid in (self.key_dcid, dcid) if dcid != self.key_dcid else (dcid,):
            keys = self._keys(cid, version, params)
            if keys is None:
                break
            try:
                found = unprotect(packet, pn_offset, len(packet), keys)
            except Exception:  # InvalidTag: not these keys (or damaged bytes)
                continue
            if found is not None:
                payload = found[1]
                break
        if payload is None:
            counters["quic_initial_undecryptable"] += 1
            self._failed()
            return None
        if self._frames(payload):
            return self._client_hello()
        return None

    def _keys(self, dcid: bytes, version: int, params: VersionParams) -> InitialKeys | None:
        key = (dcid, version)
        keys = self.keys.get(key)
        if keys is None:
            if len(self.keys) >= MAX_KEYS:
                return None
            keys = self.keys[key] = initial_keys(dcid, params)
        return keys

    def _frames(self, payload: bytes) -> bool:
        """Collect CRYPTO frames; True when new CRYPTO data arrived."""
        pos = 0
        size = len(payload)
        fresh = False
        while pos < size:
            ftype = payload[pos]
            if ftype == FRAME_PADDING:
                m = _NONZERO.search(payload, pos)
                pos = m.start() if m else size
            elif ftype == FRAME_PING:
                pos += 1
            elif ftype == FRAME_CRYPTO:
                offset, pos = read_varint(payload, pos + 1)
                length, pos = read_varint(payload, pos)
                if pos + length > size:
                    raise ValueError("CRYPTO frame beyond packet")
                fresh |= self._add_crypto(offset, payload[pos : pos + length])
                pos += length
            elif ftype == FRAME_ACK or ftype == FRAME_ACK_ECN:
                pos = _skip_ack(payload, pos)
            else:  # CONNECTION_CLOSE, or a frame not allowed in Initial packets
                if ftype != FRAME_CLOSE and ftype != FRAME_CLOSE_APP:
                    counters["quic_unexpected_frame"] += 1
                break
        return fresh

    def _add_crypto(self, offset: int, data: bytes) -> bool:
        if not data:
            return False
        if (
            offset + len(data) > MAX_CRYPTO
            or self.held + len(data) > 2 * MAX_CRYPTO
            or len(self.chunks) >= MAX_CHUNKS
        ):
            counters["quic_crypto_bound"] += 1
            return False
        old = self.chunks.get(offset)
        if old is not None and len(old) >= len(data):
            return False
        self.chunks[offset] = data
        self.held += len(data)
        return True

    def _contiguous(self) -> bytes:
        """The CRYPTO stream from offset 0 up to the first hole."""
        end = 0
        parts = []
        for offset in sorted(self.chunks):
            if offset > end:
                break
            data = self.chunks[offset]
            if offset + len(data) > end:
                parts.append(data[end - offset :])
                end = offset + len(data)
        return b"".join(parts)

    def _client_hello(self) -> dict | None:
        if 0 not in self.chunks:
            return None
        stream = self._contiguous()
        if len(stream) < 4:
            return None
        if stream[0] != tls.HS_CLIENT_HELLO:
            counters["quic_not_client_hello"] += 1
            self.done = True
            return None
        length = stream[1] << 16 | stream[2] << 8 | stream[3]
        if 4 + length > MAX_CRYPTO:
            counters["quic_crypto_bound"] += 1
            self.done = True
            return None
        if len(stream) < 4 + length:
            return None
        self.done = True
        self.chunks = {}
        try:
            hello = tls.parse_client_hello(stream[4 : 4 + length])
        except (tls.MalformedHello, struct.error, IndexError, ValueError):
            counters["quic_client_hello_malformed"] += 1
            return None
        return quic_fields(hello, self.version)


def quic_fields(hello: tls.ClientHello, version: int) -> dict:
    """The quic.* display-filter fields of a ClientHello carried in QUIC."""
    ja3_text = ja3(hello.version, hello.ciphers, hello.extensions, hello.groups, hello.point_formats)
    fields = {
        "quic.version": version,
        "quic.ja4": tls.hello_ja4(hello, quic=True),
        "quic.ja3": ja3_text,
        "quic.ja3_hash": md5_hex(ja3_text),
    }
    if hello.sni is not None:
        fields["quic.sni"] = tls.wire_text(hello.sni)
    if hello.alpn:
        fields["quic.alpn"] = [tls.wire_text(v) for v in hello.alpn]
    return fields


def _skip_ack(payload: bytes, pos: int) -> int:
    """Position after an ACK / ACK_ECN frame starting at ``pos``."""
    ecn = payload[pos] == FRAME_ACK_ECN
    pos += 1
    _, pos = read_varint(payload, pos)  # largest acknowledged
    _, pos = read_varint(payload, pos)  # delay
    count, pos = read_varint(payload, pos)
    _, pos = read_varint(payload, pos)  # first range
    if count > len(payload):
        raise ValueError("ACK range count beyond packet")
    for _ in range(count):
        _, pos = read_varint(payload, pos)
        _, pos = read_varint(payload, pos)
    if ecn:
        for _ in range(3):
            _, pos = read_varint(payload, pos)
    return pos
