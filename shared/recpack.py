"""Records (shared/records.py) in a packed layout for the decoder -> flow-tracker link.

Why: msgpack spent 0.26 us a packet packing a batch of 13-field record tuples in the decoder
and 0.46-0.56 us unpacking it in the flow-tracker, about a fifth of the pipeline's CPU per
packet (docs/benchmarks.md, "Packed records"). Every record has the same fixed fields, so one
fixed header per record plus the two addresses says it all; only the rare application-layer
map (``app``) stays msgpack, inside the record.

A RECORDS frame's body is then ``bytes`` in this layout instead of a list of tuples. The
flow-tracker takes both: a batch that does not fit the layout (a field out of range or of
another type) travels as a list, exactly as before.

Layout, little-endian::

    body    = b"R" version:u8 count:u32 record*count
    record  = kind:u8 num:u64 ts:f64 wirelen:u32 proto:u8 sport:u16 dport:u16 flags:u16
              paylen:u32 frag:u8 seq:i64 src dst [applen:u32 app]
    kind    = bit 0: src is 16 bytes (else 4); bit 1: dst is 16 bytes; bit 2: app follows

This module is the reference; ``scripts/cython/_recpack_c.pyx`` is its compiled twin
(shared/compiled.py), written by hand because it reads and writes through C pointers, and
tests/test_recpack.py checks that both give the same bytes and the same tuples.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgpack

MAGIC = 0x52  # "R"
VERSION = 1
_HEAD = struct.Struct("<BBI")
_REC = struct.Struct("<BQdIBHHHIBq")
_LEN = struct.Struct("<I")
HEAD_SIZE = _HEAD.size  # 6
REC_SIZE = _REC.size  # 41
SRC16, DST16, HAS_APP = 1, 2, 4
_INT_SLOTS = (0, 2, 3, 6, 7, 8, 9, 10, 11)
_ADDR_SIZES = (4, 16)
_pack_app = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def pack_records(records: Sequence[tuple]) -> bytes | None:
    """The batch in the packed layout, or None when a record does not fit it (send the list)."""
    parts = [_HEAD.pack(MAGIC, VERSION, len(records))]
    add = parts.append
    for rec in records:
        if type(rec) is not tuple or len(rec) != 13:
            return None
        num, ts, wl, proto, src, dst, sport, dport, flags, pl, frag, seq, app = rec
        if type(ts) is not float or type(src) is not bytes or type(dst) is not bytes:
            return None
        if len(src) not in _ADDR_SIZES or len(dst) not in _ADDR_SIZES:
            return None
        for i in _INT_SLOTS:
            if type(rec[i]) is not int:
                return None
        kind = (len(src) == 16) | (len(dst) == 16) << 1 | (app is not None) << 2
        try:
            add(_REC.pack(kind, num, ts, wl, proto, sport, dport, flags, pl, frag, seq))
            add(src)
            add(dst)
            if app is not None:
                blob = _pack_app(app)
                add(_LEN.pack(len(blob)))
                add(blob)
        except (struct.error, TypeError, ValueError, OverflowError):
            return None  # out of the layout's range, or an app map msgpack cannot carry
    if len(records) > 0xFFFFFFFF:
        return None
    return b"".join(parts)


def unpack_records(body: bytes) -> list[tuple]:
    """The record tuples of a packed body, as msgpack would have given them.

    Raises ValueError for anything that is not a whole, well-formed body: the caller counts
    the frame as bad and drops it.
    """
    size = len(body)
    if size < HEAD_SIZE:
        raise ValueError("packed records: shorter than its header")
    magic, version, count = _HEAD.unpack_from(body, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"packed records: unknown header {magic:#x}/{version}")
    if count > (size - HEAD_SIZE) // (REC_SIZE + 8):
        raise ValueError("packed records: count larger than the body")
    out = []
    add = out.append
    o = HEAD_SIZE
    rec_unpack = _REC.unpack_from
    for _ in range(count):
        if o + REC_SIZE > size:
            raise ValueError("packed records: truncated record")
        kind, num, ts, wl, proto, sport, dport, flags, pl, frag, seq = rec_unpack(body, o)
        if kind > 7:
            raise ValueError(f"packed records: unknown kind {kind}")
        o += REC_SIZE
        ls = 16 if kind & SRC16 else 4
        ld = 16 if kind & DST16 else 4
        if o + ls + ld > size:
            raise ValueError("packed records: truncated addresses")
        src = body[o : o + ls]
        dst = body[o + ls : o + ls + ld]
        o += ls + ld
        app = None
        if kind & HAS_APP:
            if o + 4 > size:
                raise ValueError("packed records: truncated app length")
            (la,) = _LEN.unpack_from(body, o)
            o += 4
            if o + la > size:
                raise ValueError("packed records: truncated app map")
            app = _unpack_app(body[o : o + la])
            o += la
        add((num, ts, wl, proto, src, dst, sport, dport, flags, pl, frag, seq, app))
    if o != size:
        raise ValueError("packed records: bytes after the last record")
    return out


def records_body(records: list[tuple]) -> bytes | list[tuple]:
    """A RECORDS frame's body: packed when the compiled twin runs (0.11 us a record against
    msgpack's 0.26), the list otherwise (the pure packer is slower than msgpack) and for a batch
    the layout cannot carry."""
    if COMPILED:
        body = pack_records(records)
        if body is not None:
            return body
    return records


def records_of(body: object) -> list[tuple]:
    """A RECORDS frame's records, packed or as a list (ValueError when it is neither)."""
    if type(body) is bytes:
        return unpack_records(body)
    if isinstance(body, tuple | list):
        return list(body)
    raise ValueError("records body is neither packed nor a list")


def _unpack_app(blob: bytes) -> object:
    """An app map as the frame's own msgpack decoding gives it (tuples, str keys)."""
    try:
        return msgpack.unpackb(blob, raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"packed records: bad app map: {exc}") from None


from shared.compiled import adopt  # noqa: E402  (after the definitions it rebinds)

COMPILED: bool = adopt(globals(), ("pack_records", "unpack_records"))
