"""Link layers: find where the network layer starts and which protocol it is.

One walker serves both callers: the fast path calls ``locate(linktype, data)`` for anything
that is not plain untagged Ethernet (it inlines that case), and the dissector passes ``out``
and ``protos`` to also collect display-filter fields. Returned ethertypes are normalised, so
raw IP, BSD null/loop and Cisco HDLC all report ``ETH_IP4``/``ETH_IP6`` like Ethernet does;
``NON_IP`` means a frame that decoded fine but carries no IP.
"""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed, mac_text

# libpcap LINKTYPE_* values handled here
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW_BSD = 12
DLT_RAW_OPENBSD = 14
DLT_RAW = 101
DLT_C_HDLC = 104
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276
RAW_LINKTYPES = frozenset((DLT_RAW, DLT_RAW_BSD, DLT_RAW_OPENBSD))

NON_IP = 0
ETH_IP4 = 0x0800
ETH_ARP = 0x0806
ETH_IP6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_QINQ_OLD = 0x9100
ETH_PPPOE_SESSION = 0x8864
ETH_MPLS = 0x8847
ETH_MPLS_MCAST = 0x8848
ETH_FABRICPATH = 0x8903  # Cisco FabricPath: a 2-byte tag, then the whole original Ethernet header
VLAN_TYPES = frozenset((ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD))
# Link types above this stand for "a packet starting at a header of ethertype (value - base)":
# what a tunnel (GRE, Geneve, IP-in-IP) carries. Not libpcap values; used inside the decoder only.
ETHERTYPE_LINKTYPE_BASE = 0x10000
MAX_TAGS = 8  # bound the tag walk: a frame of nothing but VLAN tags must not loop for long

# BSD address families seen in DLT_NULL / DLT_LOOP headers (IPv6 differs between BSDs)
AF_TO_ETHERTYPE = {2: ETH_IP4, 10: ETH_IP6, 24: ETH_IP6, 28: ETH_IP6, 30: ETH_IP6}
PPP_TO_ETHERTYPE = {0x0021: ETH_IP4, 0x0057: ETH_IP6}  # also the compressed 0x21 / 0x57

ETH = struct.Struct("!6s6sH")
VLAN = struct.Struct("!HH")  # TCI, next ethertype
PPPOE = struct.Struct("!BBHH")  # ver/type, code, session, length
PPP_PROTO = struct.Struct("!H")
MPLS = struct.Struct("!I")
SLL = struct.Struct("!HHH8sH")  # pkttype, hatype, halen, address, protocol
SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, hatype, pkttype, halen, address
NULL_LE = struct.Struct("<I")
NULL_BE = struct.Struct(">I")
CHDLC = struct.Struct("!BBH")  # address, control, protocol

Fields = dict[str, Any]


def ethertype_linktype(etype: int) -> int:
    """The pseudo link type of a packet that starts with a header of ethertype ``etype``."""
    return ETHERTYPE_LINKTYPE_BASE + etype


def locate(
    linktype: int, data: bytes, out: Fields | None = None, protos: list[str] | None = None
) -> tuple[int, int]:
    """Return (ethertype, offset of the network header); raise a decode error if malformed."""
    if linktype == DLT_EN10MB:
        dst, src, etype = ETH.unpack_from(data, 0)
        if out is not None:
            # an 802.3 length (< 0x0600) is no ethertype: Wireshark shows eth.len instead
            eth = {"dst": mac_text(dst), "src": mac_text(src)}
            eth["type" if etype >= 0x0600 else "len"] = etype
            out["eth"] = eth
            protos.append("eth")
        return _ethertype(data, 14, etype, out, protos)
    if linktype > ETHERTYPE_LINKTYPE_BASE:  # the payload of a tunnel header
        etype = linktype - ETHERTYPE_LINKTYPE_BASE
        if etype == ETH_IP4 or etype == ETH_IP6:
            return etype, 0
        return _ethertype(data, 0, etype, out, protos)
    if linktype in RAW_LINKTYPES or linktype == DLT_IPV4 or linktype == DLT_IPV6:
        if not data:
            raise Malformed("empty raw IP packet")
        version = data[0] >> 4
        if out is not None:
            protos.append("raw")
        if version == 4 and linktype != DLT_IPV6:
            return ETH_IP4, 0
        if version == 6 and linktype != DLT_IPV4:
            return ETH_IP6, 0
        raise Malformed(f"raw IP packet with IP version {version}")
    if linktype == DLT_LINUX_SLL:
        pkttype, hatype, halen, addr, proto = SLL.unpack_from(data, 0)
        if out is not None:
            out["sll"] = _sll_fields(pkttype, hatype, halen, addr, proto)
            protos.append("sll")
        return _ethertype(data, 16, proto, out, protos)
    if linktype == DLT_LINUX_SLL2:
        proto, _res, ifindex, hatype, pkttype, halen, addr = SLL2.unpack_from(data, 0)
        if out is not None:
            fields = _sll_fields(pkttype, hatype, halen, addr, proto)
            fields["ifindex"] = ifindex
            out["sll"] = fields
            protos.append("sll")
        return _ethertype(data, 20, proto, out, protos)
    if linktype == DLT_NULL or linktype == DLT_LOOP:
        if linktype == DLT_NULL:
            family = NULL_LE.unpack_from(data, 0)[0]
            if family > 0xFFFF:  # written by a big-endian host
                family = NULL_BE.unpack_from(data, 0)[0]
        else:
            family = NULL_BE.unpack_from(data, 0)[0]
        if out is not None:
            out["null"] = {"family": family}
            protos.append("null")
        return AF_TO_ETHERTYPE.get(family, NON_IP), 4
    if linktype == DLT_C_HDLC:
        address, control, proto = CHDLC.unpack_from(data, 0)
        if out is not None:
            out["chdlc"] = {"address": address, "control": control, "protocol": proto}
            protos.append("chdlc")
        return _ethertype(data, 4, proto, out, protos)
    raise Malformed(f"unsupported link type {linktype}")


def _sll_fields(pkttype: int, hatype: int, halen: int, addr: bytes, proto: int) -> Fields:
    fields: Fields = {"pkttype": pkttype, "hatype": hatype, "halen": halen, "etype": proto}
    if halen == 6:
        fields["src"] = {"eth": mac_text(addr[:6])}
    return fields


def _ethertype(
    data: bytes, off: int, etype: int, out: Fields | None, protos: list[str] | None
) -> tuple[int, int]:
    """Follow VLAN tags, PPPoE sessions and MPLS labels to the protocol they carry."""
    holder = out
    for _ in range(MAX_TAGS):
        if etype in VLAN_TYPES:
            tci, etype = VLAN.unpack_from(data, off)
            off += 4
            if holder is not None:
                tag = {"id": tci & 0x0FFF, "priority": tci >> 13, "dei": (tci >> 12) & 1, "etype": etype}
                holder["vlan" if holder is out else "inner"] = tag
                holder = tag
                protos.append("ethertype")
                protos.append("vlan")
            continue
        if etype == ETH_FABRICPATH and holder is out and off == 14:
            ftag_ttl = PPP_PROTO.unpack_from(data, off)[0]
            idst, isrc, etype = ETH.unpack_from(data, off + 2)
            off += 16
            if out is not None:
                # Wireshark shows cfp, then the original frame's eth layer: the outer one moves
                # to the packet's outer-layer list, where eth.* filters still find it
                outer = {"eth": out.pop("eth")}
                out.setdefault("_outer", []).append(outer)
                out["cfp"] = {"ftag": ftag_ttl >> 6, "ttl": ftag_ttl & 0x3F, "outer": outer}
                out["eth"] = {"dst": mac_text(idst), "src": mac_text(isrc), "type": etype}
                protos += ("cfp", "eth")
            continue
        if etype == ETH_PPPOE_SESSION:
            ver_type, code, session, length = PPPOE.unpack_from(data, off)
            off += 6
            ppp = data[off]
            if ppp & 1:  # protocol field compression: a one-byte protocol (0x21 is IPv4)
                off += 1
            else:
                ppp = PPP_PROTO.unpack_from(data, off)[0]
                off += 2
            if out is not None:
                out["pppoes"] = {
                    "version": ver_type >> 4,
                    "type": ver_type & 15,
                    "code": code,
                    "session_id": session,
                    "payload_length": length,
                }
                out["ppp"] = {"protocol": ppp}
                protos += ("ethertype", "pppoes", "ppp")
            return PPP_TO_ETHERTYPE.get(ppp, NON_IP), off
        if etype == ETH_MPLS or etype == ETH_MPLS_MCAST:
            return _mpls(data, off, out, protos)
        break
    else:
        raise Malformed("too many VLAN tags")
    if out is not None:
        protos.append("ethertype" if etype >= 0x0600 else "llc")
    if etype < 0x0600:  # an 802.3 length field: LLC/SNAP frames (STP, CDP, ...) carry no IP here
        return NON_IP, off
    return etype, off


def _mpls(data: bytes, off: int, out: Fields | None, protos: list[str] | None) -> tuple[int, int]:
    labels = []
    entries = []
    for _ in range(MAX_TAGS):
        entry = MPLS.unpack_from(data, off)[0]
        off += 4
        labels.append(entry >> 12)
        entries.append(entry)
        if entry & 0x100:  # bottom of stack
            break
    else:
        raise Malformed("too many MPLS labels")
    if out is not None:
        # Wireshark: one mpls layer per label stack entry, so mpls.label matches any of them
        out["mpls"] = {
            "label": labels,
            "labels": labels,
            "exp": [(e >> 9) & 7 for e in entries],
            "bottom": [(e >> 8) & 1 for e in entries],
            "ttl": [e & 0xFF for e in entries],
        }
        protos += ("ethertype", "mpls")
    version = data[off] >> 4 if off < len(data) else 0
    return {4: ETH_IP4, 6: ETH_IP6}.get(version, NON_IP), off


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('locate',))
