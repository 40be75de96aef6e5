"""ICMP and ICMPv6: type and code (records carry no ports for them)."""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed

ICMP = struct.Struct("!BBH")  # type, code, checksum
ECHO = struct.Struct("!HH")  # identifier, sequence (echo request/reply only)
HDR_MIN = 4
ECHO_TYPES = {1: (0, 8), 58: (128, 129)}


def parse(data: bytes, off: int, l4len: int, proto: int, out: dict[str, Any] | None = None) -> None:
    """Check (and for the dissector describe) an ICMP/ICMPv6 header at ``off``."""
    if l4len < HDR_MIN:
        raise Malformed(f"ICMP message of {l4len} bytes")
    icmp_type, code, csum = ICMP.unpack_from(data, off)
    if out is not None:
        fields: dict[str, Any] = {"type": icmp_type, "code": code, "checksum": csum}
        if icmp_type in ECHO_TYPES[proto] and l4len >= 8 and off + 8 <= len(data):
            fields["ident"], fields["seq"] = ECHO.unpack_from(data, off + 4)
        out["icmp" if proto == 1 else "icmpv6"] = fields
