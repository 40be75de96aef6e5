"""Community ID v1 flow hashes (https://github.com/corelight/community-id-spec), for EVE output.

The same flow gets the same ID in Zeek, Suricata and here, whichever side sent first: the two
endpoints are ordered (smaller address, then smaller port, first), then SHA-1 is taken over
seed (2 bytes) . address . address . protocol (1 byte) . zero padding (1 byte) . port . port
(ports only for TCP, UDP, SCTP, ICMP, ICMPv6) and written as ``1:`` + base64. ICMP types and
codes stand in for ports, with a request/reply pair mapped to each other so both directions
match; a type with no counterpart is "one way" and never reordered.

No library is used: the one on PyPI (``communityid``) is not among the project's dependencies,
and the function is 30 lines. tests/test_community_id.py checks it against the spec's vectors.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import socket
import struct

TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
_PORTED = frozenset((TCP, UDP, ICMP, ICMP6, SCTP))
_SEED, _PROTO, _PORTS = struct.Struct("!H"), struct.Struct("!BB"), struct.Struct("!HH")

# ICMP type -> the type of the other half of its exchange (the spec's table, from Zeek)
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130}
_ICMP6_PAIRS.update({139: 140, 140: 139, 144: 145, 145: 144})


@functools.lru_cache(maxsize=8192)
def _packed(addr: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"{addr!r} is not an IP address") from None


def community_id(
    proto: int, saddr: str, daddr: str, sport: int | None = 0, dport: int | None = 0, seed: int = 0
) -> str:
    """The Community ID v1 string of a flow; for ICMP/ICMPv6 ``sport`` is the type, ``dport`` the code.

    Raises ValueError for an address that is not one, or two addresses of different families.
    """
    src, dst = _packed(saddr), _packed(daddr)
    if len(src) != len(dst):
        raise ValueError(f"{saddr} and {daddr} are of different address families")
    ported = proto in _PORTED and sport is not None and dport is not None
    one_way = False
    sp, dp = (sport or 0), (dport or 0)
    if ported and proto in (ICMP, ICMP6):
        pairs = _ICMP4_PAIRS if proto == ICMP else _ICMP6_PAIRS
        if sp in pairs:
            dp = pairs[sp]
        else:
            one_way = True
    if not one_way and (src, sp) > (dst, dp):
        src, dst, sp, dp = dst, src, dp, sp
    data = b"".join((_SEED.pack(seed), src, dst, _PROTO.pack(proto, 0), _PORTS.pack(sp, dp) if ported else b""))
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()
