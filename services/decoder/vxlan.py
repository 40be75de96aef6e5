"""VXLAN (RFC 7348): the Ethernet frame a UDP datagram to port 4789 (or 8472) carries.

Overlay networks (Kubernetes CNIs, cloud VPCs, EVPN fabrics) wrap every packet of a tenant in
outer Ethernet/IP/UDP plus this 8-byte header; the flows worth monitoring are the inner ones.
Both the fast path and the dissector call ``decapsulate`` once they have a UDP payload whose
destination port is in ``PORTS``, then decode the returned frame as plain Ethernet.

Header: flags (1 byte, the I bit 0x08 says the VNI is valid), 3 reserved bytes, the 24-bit VNI
and one reserved byte. Only the I bit is required: reserved bits are not checked because
VXLAN-GBP (Linux, also on port 4789) puts its G bit and policy id there. Anything that is not a
VXLAN header followed by at least an Ethernet header is left to be read as plain UDP payload.
"""

from __future__ import annotations

import struct

VXLAN = struct.Struct("!B3xI")  # flags, reserved, VNI << 8 | reserved
HDR_LEN = 8
ETH_HDR_LEN = 14
FLAG_I = 0x08  # "VNI present": RFC 7348 requires it set
PORTS = frozenset((4789, 8472))  # IANA port; Linux's pre-IANA default (also flannel's)
MAX_NESTING = 2  # VXLAN headers peeled per packet: a VXLAN-in-VXLAN-in-... chain stops here


def decapsulate(data: bytes, off: int, end: int) -> tuple[int, int, bytes] | None:
    """(flags, vni, inner frame) for a VXLAN header at ``data[off:end]``; None if it is not one.

    ``end`` is where the UDP payload ends by the IP/UDP lengths; the inner frame is cut there,
    so trailing Ethernet padding of the outer frame does not leak into it. Never raises.
    """
    if off < 0 or min(end, len(data)) - off < HDR_LEN + ETH_HDR_LEN:
        return None
    flags, word = VXLAN.unpack_from(data, off)
    if not flags & FLAG_I:
        return None
    return flags, word >> 8, data[off + HDR_LEN : end]
