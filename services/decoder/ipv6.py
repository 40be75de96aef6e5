"""IPv6: the fixed header and the walk over extension headers to the upper-layer protocol."""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed, ip_text
from services.decoder.ipv4 import IpHeader
from shared.records import FRAG_FIRST, FRAG_LATER, FRAG_NONE

# version/class/flow, payload length, next header, hop limit, src, dst
IP6 = struct.Struct("!IHBB16s16s")
# the fast path's selection: first byte (version), payload length, next header, src, dst
IP6_FAST = struct.Struct("!B3xHBx16s16s")
EXT_HDR = struct.Struct("!BB")  # next header, length
FRAG_HDR = struct.Struct("!BxHI")  # next header, offset+flags, identification

HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS = 0, 43, 44, 51, 60
EXTENSION_HEADERS = frozenset((HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS))
EXT_NAMES = {HOPOPTS: "hopopts", ROUTING: "routing", FRAGMENT: "fraghdr", AH: "ah", DSTOPTS: "dstopts"}
MAX_EXT_HEADERS = 16


def walk_ext(
    data: bytes,
    off: int,
    nxt: int,
    limit: int,
    out: dict[str, Any] | None = None,
    protos: list[str] | None = None,
) -> tuple[int, int, int]:
    """Skip extension headers from ``off``; return (upper protocol, its offset, fragment state).

    ``limit`` is where the IPv6 packet ends per its payload length; a header crossing it is
    malformed. A non-first fragment stops the walk: what follows is not a header.
    """
    frag = FRAG_NONE
    for _ in range(MAX_EXT_HEADERS):
        if nxt not in EXTENSION_HEADERS:
            return nxt, off, frag
        if nxt == FRAGMENT:
            following, offlg, ident = FRAG_HDR.unpack_from(data, off)
            size = 8
            if out is not None:
                out["ipv6"]["fraghdr"] = {
                    "nxt": following,
                    "offset": (offlg >> 3) << 3,
                    "more": offlg & 1,
                    "ident": ident,
                }
            if offlg >> 3:
                frag = FRAG_LATER
            elif offlg & 1:
                frag = FRAG_FIRST
        else:
            following, length = EXT_HDR.unpack_from(data, off)
            size = (length + 2) << 2 if nxt == AH else (length + 1) << 3
            if out is not None:
                out["ipv6"][EXT_NAMES[nxt]] = {"nxt": following, "len": size}
        if off + size > limit:
            raise Malformed(f"IPv6 {EXT_NAMES[nxt]} header runs past the payload length")
        if protos is not None:
            protos.append("ipv6." + EXT_NAMES[nxt] if nxt != AH else "ah")
        off += size
        nxt = following
        if frag == FRAG_LATER:
            return nxt, off, frag
    raise Malformed("too many IPv6 extension headers")


def parse(
    data: bytes, off: int, out: dict[str, Any] | None = None, protos: list[str] | None = None
) -> IpHeader:
    """Decode an IPv6 header and its extension headers at ``off``; raise a decode error if unusable."""
    vcf, plen, nxt, hlim, src, dst = IP6.unpack_from(data, off)
    if out is not None:
        out["ipv6"] = {
            "version": vcf >> 28,
            "tclass": (vcf >> 20) & 0xFF,
            "flow": vcf & 0xFFFFF,
            "plen": plen,
            "nxt": nxt,
            "hlim": hlim,
            "src": ip_text(src),
            "dst": ip_text(dst),
        }
    if vcf >> 28 != 6:
        raise Malformed(f"IP version {vcf >> 28} in an IPv6 packet")
    if plen == 0:  # jumbogram or segmentation offload: the captured length is all we know
        plen = len(data) - off - 40
    total = plen + 40
    proto, l4, frag = walk_ext(data, off + 40, nxt, off + total, out, protos)
    return IpHeader(proto, src, dst, l4, off + total - l4, frag, total)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("walk_ext", "parse"))
