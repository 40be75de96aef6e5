"""Tunnel headers other than VXLAN: GRE (with PPP, ERSPAN I/II/III), Geneve, IP-in-IP / 6in4.

Each ``*_inner`` function reads one tunnel header and returns ``(fields, inner_linktype,
inner_bytes)`` or None when the bytes are not that tunnel (they are then left as the outer
packet's payload). ``inner_linktype`` is a libpcap link type (Ethernet for ERSPAN, Geneve and
transparent Ethernet bridging) or ``link.ethertype_linktype(ethertype)`` for a packet that
starts at a network header (IP, MPLS, PPP's IP). Both the fast path and the dissector call
these, then decode the inner bytes as a packet of their own, so the pipeline's flow record is
the inner packet's, as for VXLAN.

Never raises: every length is checked against ``end`` (where the outer payload ends by its IP
length), and the inner bytes are cut there so trailing link padding does not leak in.
"""

from __future__ import annotations

import struct
from typing import Any

from services.decoder import link

GRE_HDR = struct.Struct("!HH")  # flags and version, protocol type
GENEVE_HDR = struct.Struct("!BBHI")  # version/option length, flags, protocol type, VNI << 8
ERSPAN2 = struct.Struct("!HHI")  # version/vlan, cos/en/t/session id, reserved/index
ERSPAN3 = struct.Struct("!HHIHH")  # version/vlan, cos/bso/t/session id, timestamp, sgt, p/ft/hw/d/gra/o

GENEVE_PORT = 6081
ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame
ETHERTYPE_ERSPAN2 = 0x88BE  # ERSPAN type I (no sequence number) or II
ETHERTYPE_ERSPAN3 = 0x22EB
ETHERTYPE_PPP = 0x880B  # PPTP's enhanced GRE (version 1)
PPP_IP = {0x0021: link.ETH_IP4, 0x0057: link.ETH_IP6}
IPIP, IPV6_IN_IP, GRE = 4, 41, 47
IP_TUNNEL_PROTOS = frozenset((IPIP, IPV6_IN_IP, GRE))
MAX_NESTING = 3  # tunnel headers peeled per packet (any kind, VXLAN included)

Inner = tuple[dict[str, Any], int, bytes]


def ip_inner(proto: int, data: bytes, off: int, end: int) -> tuple[str, Inner] | None:
    """(layer name, inner) for IP protocol ``proto`` at ``data[off:end]``: GRE, IPv4 or IPv6 in IP."""
    if proto == GRE:
        found = gre_inner(data, off, end)
        return None if found is None else ("gre", found)
    if end - off < 20 or off >= len(data):
        return None
    version = data[off] >> 4
    if proto == IPIP and version == 4:
        return "ipip", ({}, link.ethertype_linktype(link.ETH_IP4), data[off:end])
    if proto == IPV6_IN_IP and version == 6:
        return "ipip", ({}, link.ethertype_linktype(link.ETH_IP6), data[off:end])
    return None


def gre_inner(data: bytes, off: int, end: int) -> Inner | None:
    """GRE (RFC 2784/2890, and PPTP's version 1) and what it carries."""
    end = min(end, len(data))
    if end - off < 4:
        return None
    flags, proto = GRE_HDR.unpack_from(data, off)
    version = flags & 7
    if version > 1 or flags & 0x4000:  # unknown version, or source routing (obsolete)
        return None
    pos = off + 4
    fields: dict[str, Any] = {
        "flags_and_version": flags,
        "flags": {
            "checksum": (flags >> 15) & 1,
            "routing": (flags >> 14) & 1,
            "key": (flags >> 13) & 1,
            "sequence_number": (flags >> 12) & 1,
            "version": version,
        },
        "proto": proto,
    }
    if flags & 0x8000:
        pos += 4  # checksum and offset
    if flags & 0x2000:
        if pos + 4 > end:
            return None
        fields["key"] = struct.unpack_from("!I", data, pos)[0]
        pos += 4
    if flags & 0x1000:
        if pos + 4 > end:
            return None
        fields["sequence_number"] = struct.unpack_from("!I", data, pos)[0]
        pos += 4
    if version == 1 and flags & 0x0080:
        pos += 4  # acknowledgement number
    if pos > end:
        return None
    if proto == ETHERTYPE_TEB:
        return fields, link.DLT_EN10MB, data[pos:end]
    if proto == ETHERTYPE_ERSPAN2:
        if not flags & 0x1000:  # type I: no ERSPAN header, the mirrored frame follows
            fields["erspan"] = {"version": 0}
            return fields, link.DLT_EN10MB, data[pos:end]
        if pos + 8 > end:
            return None
        vv, sess, idx = ERSPAN2.unpack_from(data, pos)
        fields["erspan"] = {
            "version": vv >> 12,
            "vlan": vv & 0xFFF,
            "cos": sess >> 13,
            "spanid": sess & 0x3FF,
            "index": idx & 0xFFFFF,
        }
        return fields, link.DLT_EN10MB, data[pos + 8 : end]
    if proto == ETHERTYPE_ERSPAN3:
        if pos + 12 > end:
            return None
        vv, sess, ts, sgt, bits = ERSPAN3.unpack_from(data, pos)
        size = 12 + (8 if bits & 1 else 0)  # o bit: an 8-byte platform-specific subheader
        if pos + size > end or (bits >> 10) & 0x1F:  # frame type 0 (Ethernet) only
            return None
        fields["erspan"] = {
            "version": vv >> 12,
            "vlan": vv & 0xFFF,
            "cos": sess >> 13,
            "spanid": sess & 0x3FF,
            "timestamp": ts,
            "sgt": sgt,
            "direction": (bits >> 3) & 1,
        }
        return fields, link.DLT_EN10MB, data[pos + size : end]
    if proto == ETHERTYPE_PPP:
        if pos + 2 <= end and data[pos] == 0xFF and data[pos + 1] == 0x03:
            pos += 2  # address and control
        if pos + 1 > end:
            return None
        ppp = data[pos]
        if ppp & 1:
            pos += 1
        else:
            if pos + 2 > end:
                return None
            ppp = data[pos] << 8 | data[pos + 1]
            pos += 2
        fields["ppp"] = {"protocol": ppp}
        etype = PPP_IP.get(ppp)
        if etype is None:
            return None
        return fields, link.ethertype_linktype(etype), data[pos:end]
    if proto in (link.ETH_IP4, link.ETH_IP6, link.ETH_MPLS, link.ETH_MPLS_MCAST):
        return fields, link.ethertype_linktype(proto), data[pos:end]
    return None


def geneve_inner(data: bytes, off: int, end: int) -> Inner | None:
    """Geneve (RFC 8926, UDP port 6081): version 0, options skipped, Ethernet or IP inside."""
    end = min(end, len(data))
    if end - off < 8:
        return None
    vo, flags, proto, word = GENEVE_HDR.unpack_from(data, off)
    if vo >> 6:
        return None
    pos = off + 8 + ((vo & 0x3F) << 2)
    if pos > end:
        return None
    fields = {
        "version": vo >> 6,
        "flags": {"value": flags, "oam": flags >> 7, "critical": (flags >> 6) & 1},
        "proto_type": proto,
        "vni": word >> 8,
    }
    if proto == ETHERTYPE_TEB:
        if end - pos < 14:
            return None
        return fields, link.DLT_EN10MB, data[pos:end]
    if proto in (link.ETH_IP4, link.ETH_IP6):
        return fields, link.ethertype_linktype(proto), data[pos:end]
    return None
