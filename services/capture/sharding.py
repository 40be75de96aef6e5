"""Symmetric flow hash: which decoder gets a packet.

Both directions of a flow hash alike (the hash mixes the two endpoints with symmetric
operations: xor and sum), so each flow reaches exactly one decoder, in order, and a decoder
can keep per-flow state. IP fragments are hashed on their addresses only (later fragments
carry no ports), so all fragments of a datagram land on one decoder. Anything that is not
IP goes to decoder 0. Tunnels -- VXLAN (UDP to 4789/8472), Geneve (UDP to 6081), GRE with
ERSPAN/PPP/Ethernet/IP inside, IP-in-IP and 6in4 -- are hashed on the inner packet, because
the decoder reports the inner packet's flow; MPLS labels, PPPoE sessions, QinQ tags and Cisco
FabricPath headers are stepped over to the IP header they carry.

Measured: a plain ``zlib.crc32`` over sorted address/port bytes cost 4.7 us a packet on
sv-merged.pcap; the integer version here costs about 1 us, which matters because capture is
a single process in front of every decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from services.decoder import link, tunnels, vxlan

_U32X2 = struct.Struct("!II").unpack_from
_U16X2 = struct.Struct("!HH").unpack_from
_U64X2 = struct.Struct("!QQ").unpack_from

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100
VXLAN_PORTS = frozenset(vxlan.PORTS)
VXLAN_FLAG_I = vxlan.FLAG_I
VXLAN_MAX_NESTING = vxlan.MAX_NESTING
ETH_MPLS, ETH_MPLS_MCAST, ETH_PPPOE, ETH_FABRICPATH = 0x8847, 0x8848, 0x8864, 0x8903
GENEVE_PORT = tunnels.GENEVE_PORT
IP_TUNNELS = tunnels.IP_TUNNEL_PROTOS
TUNNEL_MAX_NESTING = tunnels.MAX_NESTING


_M64 = 0xFFFFFFFFFFFFFFFF
_K1 = 0x9E3779B97F4A7C15  # splitmix64's constants: every input bit reaches every output bit
_K2 = 0xBF58476D1CE4E5B9
_K3 = 0x94D049BB133111EB


def _mix(a: int, b: int, x: int, y: int) -> int:
    """Symmetric 64-bit mix of two addresses (or folded IPv6 halves) and two ports.

    Plain unsigned 64-bit arithmetic, masked here and wrapping in the compiled twin, where it is
    a C function (scripts/cython/_sharding_c.pxd): both give the same number, so pure and compiled
    capture deal packets alike. ``hash`` of a tuple, used before, could not be computed in C.
    """
    h = ((a ^ b) * _K1 + ((a + b) & _M64)) & _M64
    h = (h * _K1 + ((x ^ y) << 17 | (x + y))) & _M64
    h = ((h ^ (h >> 30)) * _K2) & _M64
    h = ((h ^ (h >> 27)) * _K3) & _M64
    return h ^ (h >> 31)


def ip_hash(d: bytes, o: int, depth: int = 0) -> int:
    """Symmetric hash of the IP packet at offset ``o`` (0 when it is not IPv4/IPv6)."""
    v = d[o] >> 4
    if v == 4:
        a, b = _U32X2(d, o + 12)
        if d[o + 6] & 0x3F or d[o + 7]:  # MF flag or a fragment offset: addresses only
            return _mix(a, b, 0, 0)
        p = d[o + 9]
        if p == 6 or p == 17 or p == 132:
            return _transport_hash(d, o + ((d[o] & 15) << 2), p, a, b, depth)
        if p in IP_TUNNELS:
            inner = _tunnel_hash(tunnels.ip_inner(p, d, o + ((d[o] & 15) << 2), len(d)), depth)
            if inner is not None:
                return inner
        return _mix(a, b, 0, 0)
    if v == 6:
        a1, a2 = _U64X2(d, o + 8)
        b1, b2 = _U64X2(d, o + 24)
        return _ip6_hash(d, o + 40, d[o + 6], a1 ^ a2, b1 ^ b2, depth)
    return 0


def _transport_hash(d: bytes, l4: int, p: int, a: int, b: int, depth: int) -> int:
    """Addresses and ports; for VXLAN the inner frame's hash instead."""
    x, y = _U16X2(d, l4)
    if y in VXLAN_PORTS and p == 17:
        inner = _vxlan_inner(d, l4 + 8, depth)
        if inner is not None:
            return inner
    elif y == GENEVE_PORT and p == 17 and depth < TUNNEL_MAX_NESTING:
        inner = _tunnel_hash(tunnels.geneve_inner(d, l4 + 8, len(d)), depth)
        if inner is not None:
            return inner
    return _mix(a, b, x, y)


def _ip6_hash(d: bytes, o: int, p: int, a: int, b: int, depth: int = 0) -> int:
    """IPv6 from its first next-header ``p`` at ``o``, addresses folded to ``a`` and ``b``."""
    for _ in range(8):  # walk extension headers as the decoder does, so both agree on the flow
        if p == 6 or p == 17:
            return _transport_hash(d, o, p, a, b, depth)
        if p in IP_TUNNELS and depth < TUNNEL_MAX_NESTING:
            inner = _tunnel_hash(tunnels.ip_inner(p, d, o, len(d)), depth)
            return inner if inner is not None else _mix(a, b, 0, 0)
        if p == 44:
            if (d[o + 2] << 8 | d[o + 3]) != 0:  # a real fragment: the whole datagram by addresses
                return _mix(a, b, 0, 0)
            p = d[o]  # an atomic fragment (offset 0, no more fragments) is a whole packet
            o += 8
            continue
        if p == 0 or p == 43 or p == 60:
            p = d[o]
            o += (d[o + 1] + 1) << 3
        elif p == 51:  # AH counts its length in 4-byte units
            p = d[o]
            o += (d[o + 1] + 2) << 2
        else:
            break
    return _mix(a, b, 0, 0)


def _vxlan_inner(d: bytes, o: int, depth: int) -> int | None:
    """The hash of the Ethernet frame inside a VXLAN header at ``o``, or None if there is none.

    The decoder reports the inner packet's flow (services/decoder/vxlan.py), and the two
    directions of one inner flow usually differ in the outer source port, so the shard must
    follow the inner headers too; nesting is bounded as in the decoder.
    """
    if depth >= VXLAN_MAX_NESTING or not d[o] & VXLAN_FLAG_I or len(d) < o + 8 + 14:
        return None
    return _ethernet(d[o + 8 :], depth + 1)


def _tunnel_hash(found: tuple | None, depth: int) -> int | None:
    """The hash of the packet a tunnel header carries (tunnels.*_inner's answer), or None."""
    if found is None or depth >= TUNNEL_MAX_NESTING:
        return None
    if len(found) == 2:  # ip_inner: (layer name, inner)
        found = found[1]
    _fields, linktype, inner = found
    if linktype == link.DLT_EN10MB:
        return _ethernet(inner, depth + 1) if len(inner) >= 14 else None
    return _from_ethertype(inner, 0, linktype - link.ETHERTYPE_LINKTYPE_BASE, depth + 1)


def _ethernet(d: bytes, depth: int = 0) -> int:
    et = d[12] << 8 | d[13]
    if et == ETH_FABRICPATH:  # the original Ethernet header follows a 2-byte tag
        return _from_ethertype(d, 30, d[28] << 8 | d[29], depth)
    return _from_ethertype(d, 14, et, depth)


def _from_ethertype(d: bytes, o: int, et: int, depth: int = 0) -> int:
    """Hash of the packet at ``o`` whose ethertype is ``et``: VLAN tags, PPPoE and MPLS stepped over."""
    for _ in range(8):
        if et == ETH_VLAN or et == ETH_QINQ or et == ETH_QINQ_OLD:
            et = d[o + 2] << 8 | d[o + 3]
            o += 4
        elif et == ETH_PPPOE:
            ppp = d[o + 6] << 8 | d[o + 7]
            o += 8
            et = ETH_IPV4 if ppp == 0x0021 else ETH_IPV6 if ppp == 0x0057 else 0
        elif et == ETH_MPLS or et == ETH_MPLS_MCAST:
            while not d[o + 2] & 1:  # labels down to the bottom of the stack
                o += 4
            o += 4
            v = d[o] >> 4
            et = ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0
        else:
            break
    if et == ETH_IPV4 or et == ETH_IPV6:
        return ip_hash(d, o, depth)
    return 0


def _at(offset: int) -> Callable[[bytes], int]:
    def hasher(d: bytes) -> int:
        return ip_hash(d, offset)

    return hasher


def _sll2(d: bytes) -> int:
    return ip_hash(d, 20)


def _sll(d: bytes) -> int:
    return ip_hash(d, 16)


# libpcap link type -> function(bytes) -> hash
_HASHERS: dict[int, Callable[[bytes], int]] = {
    1: _ethernet,
    113: _sll,
    276: _sll2,
    0: _at(4),  # BSD null/loopback
    108: _at(4),  # OpenBSD loop
    101: _at(0),  # raw IP
    12: _at(0),
    14: _at(0),
    228: _at(0),
    229: _at(0),
    104: _at(4),  # Cisco HDLC
}


_VXLAN_A, _VXLAN_B = sorted(VXLAN_PORTS)
_GENEVE = GENEVE_PORT


def _u64(p: bytes, o: int) -> int:
    """The big-endian 64-bit number at ``o`` (a C loop over a pointer when compiled)."""
    v = 0
    for i in range(o, o + 8):
        v = (v << 8) | p[i]
    return v


def ethernet_shard(d: bytes, decoders: int) -> int:
    """The shard of an Ethernet frame: IPv4 and IPv6 (behind up to two VLAN tags, IPv6 extension
    headers walked) read byte by byte, tunnels and anything unusual by the general path. Same
    answer as ``_ethernet(d) % decoders`` (tests/test_capture_sharding.py compares every packet).

    Compiled, ``p`` is a C pointer into the frame and every local a C integer
    (scripts/cython/_sharding_c.pxd), so the common cases create no Python object: on sv-merged
    the shard cost 380 ns a packet through ``struct`` and a tuple ``hash``, and costs about
    60 ns this way (docs/benchmarks.md, "Offline reader speed").
    """
    n = len(d)
    if n >= 34:
        p = d  # compiled: const unsigned char *; every read below is checked against ``n``
        o = 14
        et = p[12] << 8 | p[13]
        if (et == 0x8100 or et == 0x88A8) and n >= 38:  # ETH_VLAN, ETH_QINQ (literals: C constants)
            et = p[16] << 8 | p[17]
            o = 18
            if et == 0x8100 and n >= 42:
                et = p[20] << 8 | p[21]
                o = 22
        if et == 0x0800 and o + 20 <= n and p[o] >> 4 == 4:
            a = p[o + 12]
            a = (a << 24) | (p[o + 13] << 16) | (p[o + 14] << 8) | p[o + 15]
            b = p[o + 16]
            b = (b << 24) | (p[o + 17] << 16) | (p[o + 18] << 8) | p[o + 19]
            proto = p[o + 9]
            if (p[o + 6] & 0x3F) or p[o + 7]:  # MF flag or a fragment offset: addresses only
                return _mix(a, b, 0, 0) % decoders
            if proto == 6 or proto == 17 or proto == 132:
                o += (p[o] & 15) << 2
                if o + 4 <= n:
                    y = p[o + 2] << 8 | p[o + 3]
                    if proto != 17 or (y != _VXLAN_A and y != _VXLAN_B and y != _GENEVE):
                        x = p[o] << 8 | p[o + 1]
                        return _mix(a, b, x, y) % decoders
            elif proto != 4 and proto != 41 and proto != 47:  # not a tunnel: addresses only
                return _mix(a, b, 0, 0) % decoders
        elif et == 0x86DD and o + 40 <= n and p[o] >> 4 == 6:
            a = _u64(p, o + 8) ^ _u64(p, o + 16)
            b = _u64(p, o + 24) ^ _u64(p, o + 32)
            proto = p[o + 6]
            o += 40
            for _hop in range(8):  # hop-by-hop, routing, destination options and AH, as _ip6_hash
                if proto == 0 or proto == 43 or proto == 60:
                    if o + 2 > n:
                        break
                    proto = p[o]
                    o += (p[o + 1] + 1) << 3
                elif proto == 51:
                    if o + 2 > n:
                        break
                    proto = p[o]
                    o += (p[o + 1] + 2) << 2
                elif proto == 44:
                    if o + 4 > n:
                        break
                    if p[o + 2] or p[o + 3]:  # a real fragment: the whole datagram by addresses
                        return _mix(a, b, 0, 0) % decoders
                    proto = p[o]  # an atomic fragment is a whole packet
                    o += 8
                else:
                    break
            if proto == 6 or proto == 17:
                if o + 4 <= n:
                    y = p[o + 2] << 8 | p[o + 3]
                    if proto == 6 or (y != _VXLAN_A and y != _VXLAN_B and y != _GENEVE):
                        x = p[o] << 8 | p[o + 1]
                        return _mix(a, b, x, y) % decoders
            elif proto not in (0, 4, 41, 43, 44, 47, 51, 60):  # no tunnel, fragment or header left
                return _mix(a, b, 0, 0) % decoders
    try:
        return _ethernet(d) % decoders
    except (IndexError, struct.error):
        return 0  # too short to hash: the decoder will count it as malformed


def make_sharder(linktype: int, decoders: int) -> Callable[[bytes], int]:
    """Return ``shard(data) -> decoder index`` for one link type and decoder count."""
    if decoders <= 1:
        return lambda _d: 0
    if linktype == 1:
        return lambda d: ethernet_shard(d, decoders)
    hasher = _HASHERS.get(linktype)
    if hasher is None:
        return lambda _d: 0

    def shard(d: bytes) -> int:
        try:
            return hasher(d) % decoders
        except (IndexError, struct.error):
            return 0  # too short to hash: the decoder will count it as malformed

    return shard


def deal(
    packets: Iterator[tuple[float, bytes, int]],
    shard: Callable[[bytes], int],
    batches: list[list],
    bsize: int,
    linktype: int,
    num: int,
    until: int,
) -> tuple[int, float | None, int]:
    """Number packets and append each to its decoder's batch, until a batch is full (``full`` is
    its index), ``num`` reaches ``until`` (-1) or the packets end (-2): ``(num, last ts, full)``.

    The offline reader's per-packet loop lives here rather than in the capture service so that
    it runs in this module's compiled twin: sv-merged's 183k packets, loop and shard 0.085 ->
    0.079 CPU s (of which the shard function alone is 0.070 s; best of 5, /tmp micro-bench).
    """
    ts = None
    decoders = len(batches)
    direct = linktype == 1 and decoders > 1  # a C call to ethernet_shard, not through ``shard``
    for ts, data, wirelen in packets:
        num += 1
        i = ethernet_shard(data, decoders) if direct else shard(data)
        b = batches[i]
        b.append((num, ts, linktype, wirelen, data))
        if len(b) >= bsize:
            return num, ts, i
        if num >= until:
            return num, ts, -1
    return num, ts, -2


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("make_sharder", "deal", "ethernet_shard"))
