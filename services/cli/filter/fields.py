"""Field names: Wireshark aliases, either-direction fields, and walking a packet's nested dict.

A packet is a nested dict ({"ip": {"src": ...}, "tcp": {"flags": {"value": 18, ...}}, "dns":
{"queries": [{"name": ..., "type": ...}]}}). A field path is its keys joined by dots; where a
path meets a list, every element is walked, so one field may yield several values.
"""

from __future__ import annotations

from collections.abc import Callable

# Wireshark names -> the names pktscope's decoders emit (each may expand to several paths).
ALIASES: dict[str, tuple[str, ...]] = {
    # either-direction fields: true when either end matches
    "ip.addr": ("ip.src", "ip.dst"),
    "ipv6.addr": ("ipv6.src", "ipv6.dst"),
    "tcp.port": ("tcp.srcport", "tcp.dstport"),
    "udp.port": ("udp.srcport", "udp.dstport"),
    "eth.addr": ("eth.src", "eth.dst"),
    "arp.addr": ("arp.src.proto_ipv4", "arp.dst.proto_ipv4"),
    # the frame's bytes (`frame contains "GET"`, `frame[0:2]`)
    "frame": ("_raw",),
    # DNS: queries and answers are lists of {"name", "type", ...}; Wireshark's resp.* cover
    # every resource record: answers, authorities and additionals
    "dns.qry.name": ("dns.queries.name",),
    "dns.qry.type": ("dns.queries.type",),
    "dns.resp.name": ("dns.answers.name", "dns.authorities.name", "dns.additionals.name"),
    "dns.resp.type": ("dns.answers.type", "dns.authorities.type", "dns.additionals.type"),
    "dns.resp.ttl": ("dns.answers.ttl", "dns.authorities.ttl", "dns.additionals.ttl"),
    "dns.a": ("dns.answers.a", "dns.authorities.a", "dns.additionals.a"),
    "dns.aaaa": ("dns.answers.aaaa", "dns.authorities.aaaa", "dns.additionals.aaaa"),
    "dns.name": ("dns.queries.name", "dns.answers.name"),
    "dns.type": ("dns.queries.type", "dns.answers.type"),
    "dns.flags.rcode": ("dns.rcode",),
    "dns.flags.opcode": ("dns.opcode",),
    # HTTP
    "http.request.method": ("http.method",),
    "http.request.uri": ("http.uri",),
    "http.request.version": ("http.request_version",),
    "http.response.version": ("http.response_version",),
    "http.response.code": ("http.status",),
    "http.user-agent": ("http.user_agent",),
    # TLS / QUIC: Wireshark shows a QUIC ClientHello under tls.handshake.* too
    "tls.sni": ("tls.sni", "quic.sni"),
    "tls.handshake.extensions_server_name": ("tls.sni", "quic.sni"),
    "ssl.handshake.extensions_server_name": ("tls.sni", "quic.sni"),
    "tls.handshake.extensions_alpn_str": ("tls.alpn", "tls.alpn_selected", "quic.alpn"),
    "tls.handshake.ja3": ("tls.ja3_hash",),
    "tls.handshake.ja3_full": ("tls.ja3",),
    "tls.handshake.ja3s": ("tls.ja3s_hash",),
    "tls.handshake.ja3s_full": ("tls.ja3s",),
    "tls.handshake.ja4": ("tls.ja4",),
    "tls.handshake.ciphersuite": ("tls.cipher_suites", "tls.cipher_suite"),
    # TCP: Wireshark's flag names; the short ones stay for the docs' sake
    "tcp.flags.reset": ("tcp.flags.rst",),
    "tcp.flags.push": ("tcp.flags.psh",),
    # link layers: Wireshark names its PPPoE session fields pppoe.*
    "pppoe.version": ("pppoes.version",),
    "pppoe.type": ("pppoes.type",),
    "pppoe.code": ("pppoes.code",),
    "pppoe.session_id": ("pppoes.session_id",),
    "pppoe.payload_length": ("pppoes.payload_length",),
}
# QinQ: every tag is a vlan layer in Wireshark, so vlan.id matches any of them
for _name in ("id", "priority", "dei", "etype"):
    ALIASES["vlan." + _name] = tuple("vlan." + "inner." * depth + _name for depth in range(4))

# Layers that may also sit in front of a tunnel header; their fields are then found in the
# packet's "_outer" list too (Wireshark: a field matches any layer carrying it).
TUNNELLED_LAYERS = frozenset(
    ("eth", "vlan", "mpls", "pppoes", "ppp", "ip", "ipv6", "udp", "gre", "vxlan", "geneve", "erspan", "cfp")
)

MISSING = object()


def split_path(name: str) -> tuple[str, ...]:
    """``dns.queries[].name`` -> ("dns", "queries", "name"); the [] is only a reminder of the list."""
    return tuple(name.replace("[]", "").split("."))


def expand(name: str) -> tuple[tuple[str, ...], ...]:
    """All key paths a field name stands for (aliases expanded)."""
    bare = name.replace("[]", "")
    return tuple(split_path(p) for p in ALIASES.get(bare, (bare,)))


def _walk(node: object, keys: tuple[str, ...], out: list) -> None:
    """Append every value found at ``keys`` below ``node`` to ``out``, walking lists."""
    for i, key in enumerate(keys):
        if type(node) is dict:
            node = node.get(key, MISSING)
            if node is MISSING:
                return
        elif type(node) is list or type(node) is tuple:
            for item in node:
                _walk(item, keys[i:], out)
            return
        else:
            return
    _leaves(node, out)


def _leaves(node: object, out: list) -> None:
    """Append ``node``, or every element of it (recursively) when it is a list."""
    if type(node) is list or type(node) is tuple:
        for item in node:
            _leaves(item, out)
    else:
        out.append(node)


def _path_getter(keys: tuple[str, ...]) -> Callable[[dict, list], None]:
    """An appender of the values at ``keys``, specialised for the common one- and two-key paths."""
    if len(keys) == 1:
        (k1,) = keys

        def get1(pkt: dict, out: list) -> None:
            v = pkt.get(k1, MISSING)
            if v is MISSING:
                return
            if type(v) is list or type(v) is tuple:
                _leaves(v, out)
            else:
                out.append(v)

        return get1

    if len(keys) == 2:
        k1, k2 = keys
        rest = (k2,)

        def get2(pkt: dict, out: list) -> None:
            v = pkt.get(k1)
            if type(v) is dict:
                v = v.get(k2, MISSING)
                if v is MISSING:
                    return
                if type(v) is list or type(v) is tuple:
                    _leaves(v, out)
                else:
                    out.append(v)
            elif v is not None:
                _walk(v, rest, out)

        return get2

    def get_n(pkt: dict, out: list) -> None:
        _walk(pkt, keys, out)

    return get_n


def getter(name: str) -> Callable[[dict], list]:
    """A function giving the values of field ``name`` in a packet (empty list when absent).

    Fields of a layer that can also sit in front of a tunnel (``ip.src`` of a GRE packet) are
    looked up in each outer layer group too, as Wireshark matches any occurrence.
    """
    inner = _inner_getter(name)
    if name == "dns":  # mDNS and LLMNR messages carry dns.* fields but are not the dns protocol

        def get_dns(pkt: dict) -> list:
            return [] if "_not_dns" in pkt else inner(pkt)

        return get_dns
    if name.split(".", 1)[0].replace("[]", "") not in TUNNELLED_LAYERS:
        return inner

    def get_any_layer(pkt: dict) -> list:
        out = inner(pkt)
        outer = pkt.get("_outer")
        if outer:
            for group in outer:
                out += inner(group)
        return out

    return get_any_layer


def _inner_getter(name: str) -> Callable[[dict], list]:
    parts = tuple(_path_getter(keys) for keys in expand(name))
    if len(parts) == 1:
        (one,) = parts

        def get_one(pkt: dict) -> list:
            out: list = []
            one(pkt, out)
            return out

        return get_one

    if len(parts) == 2:
        first, second = parts

        def get_pair(pkt: dict) -> list:
            out: list = []
            first(pkt, out)
            second(pkt, out)
            return out

        return get_pair

    def get_all(pkt: dict) -> list:
        out: list = []
        for part in parts:
            part(pkt, out)
        return out

    return get_all


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('getter',))
