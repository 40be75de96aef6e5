"""IPv4 header layout and its display fields.

The fast path inlines the same rules (it unpacks ``IP4_FAST``); ``parse`` here is the readable
version the dissector uses. Length rules, shared by both and by IPv6:

* the IP total length decides the payload length. Captured bytes beyond it are link padding;
  a total length beyond the captured bytes means the capture was cut by the snaplen;
* a total length of 0 is what TCP segmentation offload leaves in locally sent packets: the
  captured length is used instead.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from services.decoder.common import Malformed, ip_text
from shared.records import FRAG_FIRST, FRAG_LATER, FRAG_NONE

# version/ihl, tos, total length, id, flags+fragment offset, ttl, proto, checksum, src, dst
IP4 = struct.Struct("!BBHHHBBH4s4s")
# the fast path's selection of the same header: version/ihl, total length, flags+offset, proto, src, dst
IP4_FAST = struct.Struct("!BxHxxHxB2x4s4s")

IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFMASK = 0x1FFF


class IpHeader(NamedTuple):
    """Where an IP header's payload is and how to read it (IPv4 and IPv6 alike)."""

    proto: int  # upper-layer protocol (after IPv6 extension headers)
    src: bytes
    dst: bytes
    l4: int  # offset of the upper-layer header in the packet
    l4len: int  # its length per the IP total length (may exceed the captured bytes)
    frag: int  # FRAG_NONE / FRAG_FIRST / FRAG_LATER
    total: int  # IP total length (header included), for the wire length


def parse(data: bytes, off: int, out: dict[str, Any] | None = None) -> IpHeader:
    """Decode an IPv4 header at ``off``; raise a decode error if it is not a usable one."""
    vhl, tos, total, ident, fragw, ttl, proto, csum, src, dst = IP4.unpack_from(data, off)
    ihl = (vhl & 15) << 2
    if out is not None:
        out["ip"] = {
            "version": vhl >> 4,
            "hdr_len": ihl,
            "dsfield": {"value": tos, "dscp": tos >> 2, "ecn": tos & 3},
            "len": total,
            "id": ident,
            "flags": {
                "value": fragw >> 13,
                "rb": fragw >> 15,
                "df": (fragw >> 14) & 1,
                "mf": (fragw >> 13) & 1,
            },
            "frag_offset": (fragw & IP_OFFMASK) << 3,
            "ttl": ttl,
            "proto": proto,
            "checksum": csum,
            "src": ip_text(src),
            "dst": ip_text(dst),
        }
    if vhl >> 4 != 4:
        raise Malformed(f"IP version {vhl >> 4} in an IPv4 packet")
    if ihl < 20:
        raise Malformed(f"IPv4 header length {ihl} < 20")
    if total == 0:
        total = len(data) - off
    if total < ihl:
        raise Malformed(f"IPv4 total length {total} < header length {ihl}")
    if off + ihl > len(data):
        raise Malformed("truncated IPv4 options")
    if fragw & IP_OFFMASK:
        frag = FRAG_LATER
    elif fragw & IP_MF:
        frag = FRAG_FIRST
    else:
        frag = FRAG_NONE
    return IpHeader(proto, src, dst, off + ihl, total - ihl, frag, total)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('parse',))
