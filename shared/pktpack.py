"""Packets (shared/records.py, capture -> decoder) in a packed layout.

Why: msgpack spent 0.22-0.31 us a packet packing capture's batches of 5-field packet tuples,
a third of capture's CPU per packet (docs/benchmarks.md, "Packed frames"). Every packet has
the same four numbers and its bytes, so one fixed header per packet says it all.

A PACKETS frame's body is then ``bytes`` in this layout instead of a list of tuples. The
decoder takes both: a batch that does not fit the layout travels as a list, as before.

Layout, little-endian::

    body    = b"P" version:u8 count:u32 packet*count
    packet  = num:u64 ts:f64 linktype:u16 wirelen:u32 caplen:u32 data[caplen]

This module is the reference; ``scripts/cython/_pktpack_c.pyx`` is its compiled twin, written
by hand like shared/recpack.py's; tests/test_recpack.py checks that both agree.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAGIC = 0x50  # "P"
VERSION = 1
_HEAD = struct.Struct("<BBI")
_PKT = struct.Struct("<QdHII")
HEAD_SIZE = _HEAD.size  # 6
PKT_SIZE = _PKT.size  # 26


def pack_packets(packets: Sequence[tuple]) -> bytes | None:
    """The batch in the packed layout, or None when a packet does not fit it (send the list)."""
    if len(packets) > 0xFFFFFFFF:
        return None
    parts = [_HEAD.pack(MAGIC, VERSION, len(packets))]
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
    if size < HEAD_SIZE:
        raise ValueError("packed packets: shorter than its header")
    magic, version, count = _HEAD.unpack_from(body, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"packed packets: unknown header {magic:#x}/{version}")
    if count > (size - HEAD_SIZE) // PKT_SIZE:
        raise ValueError("packed packets: count larger than the body")
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


def packets_body(packets: list[tuple]) -> bytes | list[tuple]:
    """A PACKETS frame's body: packed when the compiled twin runs (~0.05 us a packet against
    msgpack's 0.22-0.31), the list otherwise (the pure packer is slower than msgpack) and for a
    batch the layout cannot carry."""
    if COMPILED:
        body = pack_packets(packets)
        if body is not None:
            return body
    return packets


def packets_of(body: object) -> list | tuple:
    """A PACKETS frame's packets, packed or as a list (ValueError when it is neither)."""
    if type(body) is bytes:
        return unpack_packets(body)
    if isinstance(body, tuple | list):
        return body
    raise ValueError("packets body is neither packed nor a list")


from shared.compiled import adopt  # noqa: E402  (after the definitions it rebinds)

COMPILED: bool = adopt(globals(), ("pack_packets", "unpack_packets"))
