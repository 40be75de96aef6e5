"""The decoder's hot loop: packet tuples in, record tuples out (shared/records.py).

Everything per packet is a local name, a precompiled ``struct`` layout read in place with
``unpack_from`` and one tuple out. Untagged Ethernet + IPv4/IPv6 + TCP/UDP is inlined; other
link layers, IPv6 extension headers, ARP and ICMP go through the per-protocol modules, which
the dissector uses too. The length and fragment rules are those documented in ipv4.py,
tcp.py and udp.py; tests/test_decoder_corpus.py checks that both paths agree on every packet.

VXLAN (vxlan.py): a UDP datagram to a VXLAN port whose payload is a VXLAN header is decoded
again, as the Ethernet frame it carries (this function calling itself, ``depth`` + 1, at most
``vxlan.MAX_NESTING`` deep), and its record is the inner packet's: inner 5-tuple, inner payload
to the app inspector, but the outer frame's wire length (the bytes the tunnelled packet cost on
the wire). An inner frame carrying no IP counts as non-IP; one that does not decode leaves the
datagram a plain UDP record. For every other UDP packet the cost is one set lookup on dport.

A packet that cannot be decoded raises one of ``DECODE_ERRORS`` inside the loop (``unpack_from``
past the captured bytes raises ``struct.error``, which is free to guard against in CPython 3.11:
``try`` costs nothing until something is raised) and is counted as malformed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from services.decoder import arp, icmp, ipv6, link, tunnels, vxlan
from services.decoder.common import DECODE_ERRORS, Malformed
from services.decoder.ipv4 import IP4_FAST
from services.decoder.ipv6 import EXTENSION_HEADERS, IP6_FAST
from services.decoder.tcp import TCP_FAST
from services.decoder.udp import PORTS
from shared.records import FRAG_FIRST, FRAG_LATER, FRAG_NONE


class AppInspectorLike(Protocol):
    """What the fast path needs from services.decoder.app.inspector.AppInspector."""

    def inspect(
        self,
        ts: float,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        tcp_flags: int,
        tcp_seq: int,
        payload: bytes,
    ) -> dict[str, Any] | None: ...

    def expire(self, ts: float) -> Any: ...


class BatchResult(NamedTuple):
    """Records of one batch and its counters; decoded + malformed == packets given."""

    records: list[tuple]
    decoded: int
    malformed: int
    non_ip: int
    app_errors: int


NO_PORTS: frozenset[int] = frozenset()


_NO_STATES: dict = {}  # for inspectors without ``state_of``: every flow is handed over


def decode_batch(
    packets: Iterable[tuple], app: AppInspectorLike | None = None, depth: int = 0, expire: bool = True
) -> BatchResult:
    """Decode packet tuples (num, ts, linktype, wirelen, data) into record tuples.

    ``depth`` is how many tunnel headers were already peeled (callers leave it 0; the VXLAN
    branch passes depth + 1 for the inner frame, and at MAX_NESTING stops looking for VXLAN).
    ``expire``: end with the inspector's ``expire`` at the last packet's time, as a batch does
    (services/decoder/packed_batch.py hands over single packets of a batch and expires once).
    """
    records: list[tuple] = []
    append = records.append
    ip4_unpack = IP4_FAST.unpack_from
    ip6_unpack = IP6_FAST.unpack_from
    tcp_unpack = TCP_FAST.unpack_from
    ports_unpack = PORTS.unpack_from
    vxlan_ports = vxlan.PORTS if depth < vxlan.MAX_NESTING else NO_PORTS
    tunnel_ok = depth < tunnels.MAX_NESTING
    geneve_port = tunnels.GENEVE_PORT if tunnel_ok else -1
    ip_tunnels = tunnels.IP_TUNNEL_PROTOS if tunnel_ok else NO_PORTS
    locate = link.locate
    walk_ext = ipv6.walk_ext
    ext_headers = EXTENSION_HEADERS
    errors = DECODE_ERRORS
    inspect = app.inspect if app is not None else None
    # The inspector's flow states: a finished flow (None) is not handed over again. That saves
    # the payload copy and the call, 422 -> 156 ns a packet (timeit), for 50,708 of
    # sv-merged.pcap's 67,154 calls: 0.014 CPU s. A new SYN on a finished 5-tuple still goes in.
    state_of = getattr(app, "state_of", None) or _NO_STATES.get
    count = malformed = non_ip = app_errors = 0
    ts = None

    for num, ts, linktype, wirelen, data in packets:
        count += 1
        try:
            # ---- link layer -----------------------------------------------------------
            if linktype == 1:
                etype = data[12] << 8 | data[13]
                off = 14
                if etype != 0x0800 and etype != 0x86DD:
                    etype, off = locate(1, data)
            else:
                etype, off = locate(linktype, data)

            # ---- network layer: proto, addresses, upper header offset l4 and length l4len --
            n = len(data)
            if etype == 0x0800:
                vhl, total, fragw, proto, src, dst = ip4_unpack(data, off)
                ihl = (vhl & 15) << 2
                if vhl >> 4 != 4 or ihl < 20:
                    raise Malformed
                if total == 0:  # segmentation offload
                    total = n - off
                if total < ihl or off + ihl > n:
                    raise Malformed
                l4 = off + ihl
                l4len = total - ihl
                frag = FRAG_NONE
                if fragw & 0x3FFF:
                    frag = FRAG_LATER if fragw & 0x1FFF else FRAG_FIRST
            elif etype == 0x86DD:
                ver, plen, proto, src, dst = ip6_unpack(data, off)
                if ver >> 4 != 6:
                    raise Malformed
                if plen == 0:  # jumbogram or segmentation offload
                    plen = n - off - 40
                total = plen + 40
                l4 = off + 40
                frag = FRAG_NONE
                if proto in ext_headers:
                    # One hop-by-hop, destination-options or AH header before the upper layer
                    # is most of them (84k of sv-merged.pcap's packets): skipped inline rather
                    # than by a walk_ext call (fast path 0.35 -> 0.33 CPU s there, one run).
                    if proto != 44 and data[l4] not in ext_headers:
                        size = (data[l4 + 1] + 2) << 2 if proto == 51 else (data[l4 + 1] + 1) << 3
                        if l4 + size > off + total:
                            raise Malformed
                        proto = data[l4]
                        l4 += size
                    else:
                        proto, l4, frag = walk_ext(data, l4, proto, off + total)
                l4len = off + total - l4
            else:
                if etype == 0x0806:
                    arp.parse(data, off)
                non_ip += 1
                continue
            if off + total > wirelen:  # cut by the snaplen: the IP length says how long it was
                wirelen = off + total

            # ---- transport layer ----------------------------------------------------------
            if frag == FRAG_LATER:
                append((num, ts, wirelen, proto, src, dst, 0, 0, 0, l4len, FRAG_LATER, 0, None))
            elif proto == 6:
                if frag and (l4len < 20 or l4 + 20 > n):
                    append((num, ts, wirelen, 6, src, dst, 0, 0, 0, l4len, frag, 0, None))
                    continue
                sport, dport, seq, offx2, flags = tcp_unpack(data, l4)
                hlen = (offx2 >> 4) << 2
                if hlen < 20 or hlen > l4len:
                    if hlen >= 20 and frag:
                        append((num, ts, wirelen, 6, src, dst, 0, 0, 0, l4len, frag, 0, None))
                        continue
                    raise Malformed
                paylen = l4len - hlen
                found = None
                if (
                    inspect is not None
                    and frag == FRAG_NONE
                    and (paylen or flags & 0x07)
                    and (flags & 0x12 == 0x02 or state_of((src, dst, sport, dport, 6), False) is not None)
                ):
                    try:
                        found = inspect(
                            ts, 6, src, dst, sport, dport, flags, seq, data[l4 + hlen : l4 + l4len]
                        )
                    except Exception:  # the application layer must never stop the decoder
                        app_errors += 1
                append((num, ts, wirelen, 6, src, dst, sport, dport, flags, paylen, frag, seq, found))
            elif proto == 17:
                if frag and (l4len < 8 or l4 + 8 > n):
                    append((num, ts, wirelen, 17, src, dst, 0, 0, 0, l4len, frag, 0, None))
                    continue
                sport, dport = ports_unpack(data, l4)
                if l4len < 8:
                    raise Malformed
                paylen = l4len - 8
                if (dport in vxlan_ports or dport == geneve_port) and frag == FRAG_NONE:
                    if dport == geneve_port:
                        inner = _tunnel_inner(num, ts, tunnels.geneve_inner(data, l4 + 8, l4 + l4len), app, depth)
                    else:
                        inner = _vxlan_inner(num, ts, data, l4 + 8, l4 + l4len, app, depth)
                    if inner is not None:
                        app_errors += inner.app_errors
                        if inner.records:
                            append((num, ts, wirelen) + inner.records[0][3:])
                        else:
                            non_ip += 1
                        continue
                found = None
                if (
                    inspect is not None
                    and frag == FRAG_NONE
                    and paylen
                    and state_of((src, dst, sport, dport, 17), False) is not None
                ):
                    try:
                        found = inspect(ts, 17, src, dst, sport, dport, 0, 0, data[l4 + 8 : l4 + l4len])
                    except Exception:  # the application layer must never stop the decoder
                        app_errors += 1
                append((num, ts, wirelen, 17, src, dst, sport, dport, 0, paylen, frag, 0, found))
            elif proto in ip_tunnels and frag == FRAG_NONE and (
                inner := _tunnel_inner(num, ts, tunnels.ip_inner(proto, data, l4, l4 + l4len), app, depth)
            ):
                # GRE / ERSPAN / IP-in-IP: the record is the inner packet's, at the outer wire length
                app_errors += inner.app_errors
                if inner.records:
                    append((num, ts, wirelen) + inner.records[0][3:])
                else:
                    non_ip += 1
            else:
                # ICMP: the check icmp.parse makes, inline (77k packets of sv-merged.pcap)
                if proto == 1 or proto == 58:
                    if l4len < icmp.HDR_MIN or l4 + icmp.HDR_MIN > n:
                        raise Malformed
                    # type and code ride in the seq slot (shared/records.py): EVE's community_id
                    seq = data[l4] << 8 | data[l4 + 1] if frag != FRAG_LATER else -1
                    append((num, ts, wirelen, proto, src, dst, 0, 0, 0, l4len, frag, seq, None))
                else:
                    append((num, ts, wirelen, proto, src, dst, 0, 0, 0, l4len, frag, 0, None))
        except errors:
            malformed += 1

    if app is not None and ts is not None and not depth and expire:
        try:
            app.expire(ts)
        except Exception:  # the application layer must never stop the decoder
            app_errors += 1
    return BatchResult(records, count - malformed, malformed, non_ip, app_errors)


def _tunnel_inner(
    num: int, ts: float, found: tuple | None, app: AppInspectorLike | None, depth: int
) -> BatchResult | None:
    """The decode of the packet a tunnel header carries (``found`` from tunnels.*_inner), if it decodes."""
    if found is None:
        return None
    if len(found) == 2:  # ip_inner: (layer name, inner)
        found = found[1]
    _fields, linktype, frame = found
    inner = decode_batch(((num, ts, linktype, len(frame), frame),), app, depth + 1)
    return None if inner.malformed else inner


def _vxlan_inner(
    num: int, ts: float, data: bytes, off: int, end: int, app: AppInspectorLike | None, depth: int
) -> BatchResult | None:
    """The inner frame's decode when ``data[off:end]`` is VXLAN and that frame decodes, else None."""
    found = vxlan.decapsulate(data, off, end)
    if found is None:
        return None
    frame = found[2]
    inner = decode_batch(((num, ts, link.DLT_EN10MB, len(frame), frame),), app, depth + 1)
    return None if inner.malformed else inner


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("decode_batch",))
