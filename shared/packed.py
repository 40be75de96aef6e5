"""Frame bodies in packed layouts: capture's packets (capture -> decoder) and the decoders'
records (decoder -> flow-tracker), the tuples of shared/records.py.

Why: msgpack spent 0.17-0.28 us a packet packing capture's batches of 5-field packet tuples
and 0.24-0.26 us a record packing the decoders' 13-field records (docs/benchmarks.md, "Packed
frame bodies"). Every packet and every record has the same fixed fields, so one fixed header
each says it all; only a record's rare application-layer map (``app``) stays msgpack, inside
the record.

A PACKETS or RECORDS frame's body is then ``bytes`` in one of these layouts instead of a list
of tuples. Receivers take both (``packets_of``, ``records_of``); a batch that does not fit its
layout (a field out of range or of another type) travels as a list, exactly as before.

Layouts, little-endian::

    packets = b"P" version:u8 count:u32 packet*count
    packet  = num:u64 ts:f64 linktype:u16 wirelen:u32 caplen:u32 data[caplen]

    records = b"R" version:u8 count:u32 record*count
    record  = kind:u8 num:u64 ts:f64 wirelen:u32 proto:u8 sport:u16 dport:u16 flags:u16
              paylen:u32 frag:u8 seq:i64 src dst [applen:u32 app]
    kind    = bit 0: src is 16 bytes (else 4); bit 1: dst is 16 bytes; bit 2: app follows

This module is the reference; ``scripts/cython/_packed_c.pyx`` is its compiled twin
(shared/compiled.py), written by hand because it reads and writes through C pointers (a double
among them, which Cython's pure-Python mode cannot say); tests/test_packed_frames.py checks that
both give the same bytes and the same tuples. Senders pack only with the twin: the pure packers
are slower than msgpack.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import msgpack

VERSION = 1
_HEAD = struct.Struct("<BBI")
HEAD_SIZE = _HEAD.size  # 6

PACKETS_MAGIC = 0x50  # "P"
_PKT = struct.Struct("<QdHII")
PKT_SIZE = _PKT.size  # 26

RECORDS_MAGIC = 0x52  # "R"
_REC = struct.Struct("<BQdIBHHHIBq")
_LEN = struct.Struct("<I")
REC_SIZE = _REC.size  # 41
SRC16, DST16, HAS_APP = 1, 2, 4
_INT_SLOTS = (0, 2, 3, 6, 7, 8, 9, 10, 11)
_ADDR_SIZES = (4, 16)
_pack_app = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _count(body: bytes, magic: int, least: int, what: str) -> int:
    """The item count of a packed body's header, checked: right magic and version, and no more
    items than the body could hold at ``least`` bytes each (nothing is allocated for a lie)."""
    if len(body) < HEAD_SIZE:
        raise ValueError(f"packed {what}: shorter than its header")
    got, version, count = _HEAD.unpack_from(body, 0)
    if got != magic or version != VERSION:
        raise ValueError(f"packed {what}: unknown header {got:#x}/{version}")
    if count > (len(body) - HEAD_SIZE) // least:
        raise ValueError(f"packed {what}: count larger than the body")
    return count


# --- packets ------------------------------------------------------------------------------------
def pack_packets(packets: Sequence[tuple]) -> bytes | None:
    """The batch in the packed layout, or None when a packet does not fit it (send the list)."""
    if len(packets) > 0xFFFFFFFF:
        return None
    parts = [_HEAD.pack(PACKETS_MAGIC, VERSION, len(packets))]
    add = parts.append
    for pkt in packets:
        if type(pkt) is not tuple or len(pkt) != 5:
            return None
        num, ts, linktype, wirelen, data = pkt
        if type(num) is not int or type(ts) is not float or type(linktype) is not int:
            return None
        if type(wirelen) is not int or type(data) is not bytes:
            return None
        try:
            add(_PKT.pack(num, ts, linktype, wirelen, len(data)))
        except struct.error:
            return None  # out of the layout's range
        add(data)
    return b"".join(parts)


def unpack_packets(body: bytes) -> list[tuple]:
    """The packet tuples of a packed body, as msgpack would have given them.

    Raises ValueError for anything that is not a whole, well-formed body: the decoder counts
    the frame as bad and drops it.
    """
    size = len(body)
    count = _count(body, PACKETS_MAGIC, PKT_SIZE, "packets")
    out = []
    add = out.append
    o = HEAD_SIZE
    unpack = _PKT.unpack_from
    for _ in range(count):
        if o + PKT_SIZE > size:
            raise ValueError("packed packets: truncated header")
        num, ts, linktype, wirelen, caplen = unpack(body, o)
        o += PKT_SIZE
        if o + caplen > size:
            raise ValueError("packed packets: truncated data")
        add((num, ts, linktype, wirelen, body[o : o + caplen]))
        o += caplen
    if o != size:
        raise ValueError("packed packets: bytes after the last packet")
    return out


# --- records ------------------------------------------------------------------------------------
def pack_records(records: Sequence[tuple]) -> bytes | None:
    """The batch in the packed layout, or None when a record does not fit it (send the list)."""
    parts = [_HEAD.pack(RECORDS_MAGIC, VERSION, len(records))]
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
    count = _count(body, RECORDS_MAGIC, REC_SIZE + 8, "records")
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


def _unpack_app(blob: bytes) -> object:
    """An app map as the frame's own msgpack decoding gives it (tuples, str keys)."""
    try:
        return msgpack.unpackb(blob, raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"packed records: bad app map: {exc}") from None


# --- what the services call ---------------------------------------------------------------------
def packets_body(packets: list[tuple]) -> bytes | list[tuple]:
    """A PACKETS frame's body: packed when the compiled twin runs, else the list."""
    return _body(pack_packets, packets)


def records_body(records: list[tuple]) -> bytes | list[tuple]:
    """A RECORDS frame's body: packed when the compiled twin runs, else the list."""
    return _body(pack_records, records)


def packets_of(body: object) -> list[tuple]:
    """A PACKETS frame's packets, packed or as a list (ValueError when it is neither)."""
    return _items(unpack_packets, body, "packets")


def records_of(body: object) -> list[tuple]:
    """A RECORDS frame's records, packed or as a list (ValueError when it is neither)."""
    return _items(unpack_records, body, "records")


def _body(pack: Callable[[Sequence[tuple]], bytes | None], items: list[tuple]) -> bytes | list[tuple]:
    if COMPILED:
        body = pack(items)
        if body is not None:
            return body
    return items


def _items(unpack: Callable[[bytes], list[tuple]], body: object, what: str) -> list[tuple]:
    if type(body) is bytes:
        return unpack(body)
    if isinstance(body, tuple | list):
        return list(body)
    raise ValueError(f"{what} body is neither packed nor a list")


from shared.compiled import adopt  # noqa: E402  (after the definitions it rebinds)

COMPILED: bool = adopt(globals(), ("pack_packets", "unpack_packets", "pack_records", "unpack_records"))
