"""ARP: decoded so that it is counted (and shown by ``pktscope read``), never turned into a record."""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed, ip_text, mac_text

ARP = struct.Struct("!HHBBH")  # hardware type, protocol type, hw size, proto size, opcode


def parse(data: bytes, off: int) -> tuple[int, int, int, bytes, bytes, bytes, bytes]:
    """(hwtype, ptype, opcode, sender hw, sender proto, target hw, target proto); raises if truncated."""
    hwtype, ptype, hln, pln, opcode = ARP.unpack_from(data, off)
    body = off + 8
    end = body + 2 * (hln + pln)
    if end > len(data):
        raise Malformed("truncated ARP")
    sha = data[body : body + hln]
    spa = data[body + hln : body + hln + pln]
    tha = data[body + hln + pln : body + 2 * hln + pln]
    tpa = data[body + 2 * hln + pln : end]
    return hwtype, ptype, opcode, sha, spa, tha, tpa


def fields(parsed: tuple[int, int, int, bytes, bytes, bytes, bytes]) -> dict[str, Any]:
    hwtype, ptype, opcode, sha, spa, tha, tpa = parsed

    def side(hw: bytes, proto: bytes) -> dict[str, str]:
        side_fields = {"hw_mac": mac_text(hw)}
        if len(proto) in (4, 16):
            side_fields["proto_ipv4" if len(proto) == 4 else "proto_ipv6"] = ip_text(proto)
        return side_fields

    return {
        "hw": {"type": hwtype, "size": len(sha)},
        "proto": {"type": ptype, "size": len(spa)},
        "opcode": opcode,
        "src": side(sha, spa),
        "dst": side(tha, tpa),
    }
