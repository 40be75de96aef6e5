"""UDP header layout and display fields. Payload length comes from the IP length, like TCP's."""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed
from shared.records import FRAG_FIRST

UDP = struct.Struct("!HHHH")  # sport, dport, length, checksum
PORTS = struct.Struct("!HH4x")  # the fast path's selection (all 8 bytes must be there)
HDR_LEN = 8


def parse(
    data: bytes, off: int, l4len: int, frag: int, out: dict[str, Any] | None = None
) -> tuple[int, int, int]:
    """Return (sport, dport, header length); header length 0 if a first fragment is too short."""
    if frag == FRAG_FIRST and (l4len < HDR_LEN or off + HDR_LEN > len(data)):
        return 0, 0, 0
    sport, dport, length, csum = UDP.unpack_from(data, off)
    if out is not None:
        out["udp"] = {"srcport": sport, "dstport": dport, "length": length, "checksum": csum}
    if l4len < HDR_LEN:
        raise Malformed(f"UDP datagram of {l4len} bytes is shorter than its header")
    return sport, dport, HDR_LEN


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('parse',))
