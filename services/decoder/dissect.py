"""Full display-filter fields of one packet, for ``pktscope read``.

Uses the same layouts and walkers as the fast path (link.locate, ipv4/ipv6.parse, tcp/udp/icmp
.parse), so both decode a packet the same way; this side also builds the nested field dicts.

VXLAN is shown as Wireshark's columns show it: the top-level ``eth``/``ip``/``udp``/``tcp``...
are the inner (tunnelled) packet's, the one the pipeline makes a record of, and the layers in
front of each VXLAN header move under it: ``vxlan.vni``, ``vxlan.flags``, ``vxlan.outer.eth``,
``vxlan.outer.ip`` (or ``ipv6``), ``vxlan.outer.udp``. With nested VXLAN ``vxlan`` is a list,
outermost first, each with its own ``outer``. ``frame.protocols`` names every layer in order.
"""

from __future__ import annotations

from typing import Any

from services.decoder import arp, icmp, ipv4, ipv6, link, tcp, tunnels, udp, vxlan
from services.decoder.common import DECODE_ERRORS
from services.decoder.tcp import TH_SYN_FIN_RST
from shared.records import FRAG_LATER, FRAG_NONE

# (proto, src bytes, dst bytes, sport, dport, tcp_flags, tcp_seq, payload): the arguments after
# ``ts`` of AppInspector.inspect, present exactly when the fast path would call it
L4Tuple = tuple[int, bytes, bytes, int, int, int, int, bytes]

PROTO_NAMES = {
    1: "icmp",
    2: "igmp",
    4: "ip",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    58: "icmpv6",
    59: "ipv6.nonxt",
    132: "sctp",
}


def dissect(
    num: int, ts: float, linktype: int, wirelen: int, data: bytes
) -> tuple[dict[str, Any], L4Tuple | None]:
    """Return (fields, l4); never raises. A malformed packet has ``fields["_malformed"]``."""
    frame: dict[str, Any] = {
        "number": num,
        "time_epoch": ts,
        "len": wirelen,
        "cap_len": len(data),
        "linktype": linktype,
    }
    # "_raw": the frame's bytes for `frame contains ...` / `frame[0:4]` (left out of --json)
    fields: dict[str, Any] = {"frame": frame, "_raw": data}
    protos: list[str] = []
    l4tuple = None
    try:
        l4tuple = _layers(data, linktype, fields, protos)
    except DECODE_ERRORS as exc:
        fields["_malformed"] = _reason(exc)
        l4tuple = None
    except Exception as exc:  # a decoder bug must not stop `pktscope read` either
        fields["_malformed"] = f"decoder error: {type(exc).__name__}: {exc}"
        l4tuple = None
    frame["protocols"] = ":".join(protos)
    return fields, l4tuple


def _reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("unpack_from requires a buffer") or isinstance(exc, IndexError):
        return "truncated header"
    return text or type(exc).__name__


def _layers(
    data: bytes, linktype: int, out: dict[str, Any], protos: list[str], depth: int = 0
) -> L4Tuple | None:
    """Fields of every layer into ``out``; ``depth`` counts the tunnel headers already peeled."""
    etype, off = link.locate(linktype, data, out, protos)
    if etype == link.ETH_IP4:
        protos.append("ip")
        hdr = ipv4.parse(data, off, out)
    elif etype == link.ETH_IP6:
        protos.append("ipv6")
        hdr = ipv6.parse(data, off, out, protos)
    else:
        if etype == link.ETH_ARP:
            protos.append("arp")
            out["arp"] = arp.fields(arp.parse(data, off))
        return None
    proto, l4, l4len, frag = hdr.proto, hdr.l4, hdr.l4len, hdr.frag
    if frag != FRAG_NONE:
        out["ip" if etype == link.ETH_IP4 else "ipv6"]["fragment"] = (
            "later" if frag == FRAG_LATER else "first"
        )
    if frag == FRAG_LATER:
        protos.append("data")
        return None
    if proto in tunnels.IP_TUNNEL_PROTOS and depth < tunnels.MAX_NESTING:
        found_ip = tunnels.ip_inner(proto, data, l4, l4 + l4len)
        if found_ip is not None:
            name, (node, inner_lt, inner_data) = found_ip
            decoded, inner_l4 = _decap(name, node, inner_lt, inner_data, out, protos, depth)
            if decoded:
                return inner_l4
            return None
    protos.append(PROTO_NAMES.get(proto, str(proto)))
    if proto == 6:
        sport, dport, flags, seq, hlen = tcp.parse(data, l4, l4len, frag, out)
        if hlen and frag == FRAG_NONE and (l4len > hlen or flags & TH_SYN_FIN_RST):
            return 6, hdr.src, hdr.dst, sport, dport, flags, seq, data[l4 + hlen : l4 + l4len]
    elif proto == 17:
        sport, dport, hlen = udp.parse(data, l4, l4len, frag, out)
        if hlen and frag == FRAG_NONE and l4len > hlen:
            if dport in vxlan.PORTS and depth < vxlan.MAX_NESTING:
                found = vxlan.decapsulate(data, l4 + hlen, l4 + l4len)
                if found is not None:
                    flags, vni, frame = found
                    node = {"flags": flags << 8, "vni": vni}
                    decoded, inner_l4 = _decap("vxlan", node, link.DLT_EN10MB, frame, out, protos, depth)
                    if decoded:
                        return inner_l4
            elif dport == tunnels.GENEVE_PORT and depth < tunnels.MAX_NESTING:
                found_g = tunnels.geneve_inner(data, l4 + hlen, l4 + l4len)
                if found_g is not None:
                    node, inner_lt, inner_data = found_g
                    decoded, inner_l4 = _decap("geneve", node, inner_lt, inner_data, out, protos, depth)
                    if decoded:
                        return inner_l4
            return 17, hdr.src, hdr.dst, sport, dport, 0, 0, data[l4 + hlen : l4 + l4len]
    elif proto == 1 or proto == 58:
        icmp.parse(data, l4, l4len, proto, out)
    return None


def _decap(
    name: str,
    node: dict[str, Any],
    inner_linktype: int,
    inner_data: bytes,
    out: dict[str, Any],
    protos: list[str],
    depth: int,
) -> tuple[bool, L4Tuple | None]:
    """Decode the packet behind a tunnel header into ``out``; the outer layers move under ``name.outer``.

    Returns (decoded, l4 of the inner packet). The outer layer group is also appended to
    ``out["_outer"]`` (outermost first), where display filters look for a field of any layer.
    When the inner packet does not decode, ``out`` keeps its outer layers, gains
    ``name.inner_malformed`` and the caller goes on with the outer packet (decoded False), as
    the fast path does.
    """
    inner: dict[str, Any] = {"frame": out["frame"]}
    inner_protos = [name] if name != "ipip" else []
    # layers carried by the tunnel header (GRE's ERSPAN and PPP) are protocols of their own
    carried = {key: node.pop(key) for key in ("erspan", "ppp") if key in node}
    inner_protos += carried
    try:
        inner_l4 = _layers(inner_data, inner_linktype, inner, inner_protos, depth + 1)
    except DECODE_ERRORS as exc:
        node["inner_malformed"] = _reason(exc)
        out[name] = node
        protos.append(name)
        return False, None
    del inner["frame"]
    outer = {key: out.pop(key) for key in [k for k in out if k not in _KEPT]}
    node["outer"] = outer
    out["_outer"] = [*out.get("_outer", ()), outer, *inner.pop("_outer", ())]
    deeper = inner.pop(name, None)  # the same tunnel inside this one: list them outermost first
    if deeper is None:
        out[name] = node
    else:
        out[name] = [node, *deeper] if isinstance(deeper, list) else [node, deeper]
    out.update(inner)
    for key, value in carried.items():
        out.setdefault(key, value)
    protos += inner_protos
    return True, inner_l4


_KEPT = frozenset(("frame", "_raw", "_outer"))


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('dissect',))
