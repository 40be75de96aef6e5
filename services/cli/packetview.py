"""One decoded packet as `pktscope read` shows it: app fields merged in, and a tshark-like line.

The app inspector returns flat dotted keys ("tls.sni", "dns.queries"); display filters and
JSON output want one nested dict, so ``merge_app`` folds them in. DNS record lists arrive as
positional lists and become dicts so that ``dns.queries.name`` names something.
"""

from __future__ import annotations

from typing import Any

from .text import safe

_RECORD_KEYS = {
    "queries": ("name", "type"),
    "answers": ("name", "type", "ttl", "data"),
    "authorities": ("name", "type", "ttl", "data"),
    "additionals": ("name", "type", "ttl", "data"),
}
# Application protocols, most specific first: the first present one names the packet.
APP_PROTOCOLS = ("http2", "http", "quic", "tls", "dns", "dhcp", "ssh", "smtp", "ftp")


def _records(section: str, value: Any) -> Any:
    """[[name, type, ttl, data], ...] -> [{"name": .., "type": .., ...}, ...]."""
    keys = _RECORD_KEYS[section]
    if not isinstance(value, (list, tuple)):
        return value
    out = []
    for rec in value:
        if isinstance(rec, (list, tuple)):
            out.append(dict(zip(keys, rec, strict=False)))
        else:
            out.append(rec)
    return out


MAX_MORE = 64  # extra messages of one packet kept (pipelined requests, several DNS messages)


def _merge_flat(fields: dict[str, Any], app: dict[str, Any]) -> None:
    for key, value in app.items():
        parts = str(key).split(".")
        if parts[0] == "dns" and len(parts) == 2 and parts[1] in _RECORD_KEYS:
            value = _records(parts[1], value)
        node = fields
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                # a scalar already sits here: keep it as the node's "value"
                child = {} if child is None else {"value": child}
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
            node[leaf]["value"] = value
        else:
            node[leaf] = value


def merge_app(fields: dict[str, Any], app: dict[str, Any]) -> None:
    """Fold flat dotted app keys into the nested field dict (in place).

    The inspector lists further messages completed by the same packet under ``"more"``; their
    protocol nodes join the first one's as a list ({"http": [{...}, {...}]}), which display
    filters walk element by element, as Wireshark repeats a field for each PDU in a frame.
    """
    more = app.get("more")
    _merge_flat(fields, {k: v for k, v in app.items() if k != "more"} if more is not None else app)
    if not isinstance(more, (list, tuple)):
        return
    for extra in more[:MAX_MORE]:
        if not isinstance(extra, dict):
            continue
        nested: dict[str, Any] = {}
        _merge_flat(nested, {k: v for k, v in extra.items() if k != "more"})
        for top, node in nested.items():
            have = fields.get(top)
            if have is None:
                fields[top] = node
            elif isinstance(have, list):
                have.append(node)
            else:
                fields[top] = [have, node]


def _first(node: Any) -> Any:
    """The first message's node when a packet carried several (a list of protocol nodes)."""
    if isinstance(node, list):
        return node[0] if node else None
    return node


def addresses(fields: dict[str, Any]) -> tuple[str, str]:
    """(source, destination) text for the summary line."""
    for layer in ("ip", "ipv6"):
        hdr = fields.get(layer)
        if isinstance(hdr, dict) and "src" in hdr:
            return str(hdr["src"]), str(hdr["dst"])
    arp = fields.get("arp")
    if isinstance(arp, dict):
        s, d = arp.get("src", {}), arp.get("dst", {})
        return str(s.get("hw_mac", "?")), str(d.get("hw_mac", "?"))
    eth = fields.get("eth")
    if isinstance(eth, dict):
        return str(eth.get("src", "?")), str(eth.get("dst", "?"))
    return "?", "?"


def protocol(fields: dict[str, Any]) -> str:
    """The highest layer decoded, as Wireshark's Protocol column shows it."""
    for name in APP_PROTOCOLS:
        if name in fields:
            return name.upper()
    chain = fields.get("frame", {}).get("protocols", "")
    last = chain.rsplit(":", 1)[-1] if chain else ""
    return (last or "?").upper()


def _tcp_flags(flags: dict[str, Any]) -> str:
    names = [n.upper() for n in ("syn", "fin", "rst", "psh", "ack", "urg", "ece", "cwr") if flags.get(n)]
    return "[" + ", ".join(names) + "]" if names else "[<none>]"


def _dns_info(dns: dict[str, Any]) -> str:
    resp = dns.get("flags", {}).get("response") if isinstance(dns.get("flags"), dict) else None
    parts = ["Standard query response" if resp else "Standard query"]
    if "id" in dns:
        parts.append(f"0x{dns['id']:04x}" if isinstance(dns["id"], int) else safe(dns["id"]))
    for q in (dns.get("queries") or [])[:4]:
        if isinstance(q, dict):
            parts.append(f"{safe(q.get('type', '?'))} {safe(q.get('name', ''))}")
    for a in (dns.get("answers") or [])[:4]:
        if isinstance(a, dict):
            parts.append(f"{safe(a.get('type', '?'))} {safe(a.get('data', ''))}")
    return " ".join(parts)


def _http_info(http: dict[str, Any]) -> str:
    if "method" in http:
        line = (
            f"{safe(http.get('method'))} {safe(http.get('uri', ''))} {safe(http.get('version', ''))}".rstrip()
        )
        if "host" in http:
            line += f" host={safe(http['host'])}"
        return line
    if "status" in http:
        return f"{safe(http.get('version', 'HTTP'))} {safe(http['status'])}"
    return "HTTP"


_RECORD_NAMES = {20: "Change Cipher Spec", 21: "Alert", 23: "Application Data", 24: "Heartbeat"}
_HANDSHAKE_NAMES = {
    1: "Client Hello",
    2: "Server Hello",
    4: "New Session Ticket",
    11: "Certificate",
    12: "Server Key Exchange",
    13: "Certificate Request",
    14: "Server Hello Done",
    15: "Certificate Verify",
    16: "Client Key Exchange",
    20: "Finished",
}
_RECORD_ONLY = frozenset(("record", "handshake", "header_form", "long", "version"))


def _record_info(layer: dict[str, Any], quic: bool) -> str:
    """TLS records / QUIC packets of a frame that completed no hello (services/cli/record_layers.py)."""
    if quic:
        forms = layer.get("header_form") or []
        return "Protected Payload" if forms and not forms[0] else "Long Header"
    names: list[str] = []
    hs = layer.get("handshake")
    types = list(hs.get("type") or []) if isinstance(hs, dict) else []
    for rec in layer.get("record") or []:
        ctype = rec.get("content_type") if isinstance(rec, dict) else None
        if ctype == 22:
            names.append(
                _HANDSHAKE_NAMES.get(types.pop(0), "Handshake") if types else "Encrypted Handshake Message"
            )
        else:
            names.append(_RECORD_NAMES.get(ctype, "Record"))
    return ", ".join(dict.fromkeys(names)) or "TLS"


def _hello_info(layer: dict[str, Any], client: str) -> str:
    if not set(layer) - _RECORD_ONLY:
        return _record_info(layer, client.startswith("Initial"))
    if "ja3s" in layer or "ja3s_hash" in layer or "cipher_suite" in layer:
        text = "Server Hello"
        if "cipher_suite" in layer:
            suite = layer["cipher_suite"]
            text += f" cipher=0x{suite:04x}" if isinstance(suite, int) else f" cipher={safe(suite)}"
        if layer.get("alpn_selected"):
            text += f" ALPN={safe(layer['alpn_selected'])}"
        cert = layer.get("cert")
        if isinstance(cert, dict) and cert.get("subject"):
            text += f" cert={safe(cert['subject'])}"
        return text
    if "cert" in layer and "sni" not in layer:
        cert = layer["cert"]
        subject = cert.get("subject", "") if isinstance(cert, dict) else cert
        return f"Certificate {safe(subject)}"
    text = client
    if "sni" in layer:
        text += f" SNI={safe(layer['sni'])}"
    if "alpn" in layer:
        alpn = layer["alpn"]
        text += " ALPN=" + (",".join(safe(a) for a in alpn) if isinstance(alpn, list) else safe(alpn))
    return text


_APP_INFO = (
    ("http", _http_info),
    ("quic", lambda node: _hello_info(node, "Initial, Client Hello")),
    ("tls", lambda node: _hello_info(node, "Client Hello")),
    ("dns", _dns_info),
)


def info(fields: dict[str, Any]) -> str:
    """Wireshark-like Info column; every name from the network goes through ``safe``."""
    if "_malformed" in fields:
        return f"[Malformed packet: {safe(fields['_malformed'])}]"
    for name, describe in _APP_INFO:
        node = fields.get(name)
        if node is None:
            continue
        first = _first(node)
        if isinstance(first, dict):
            text = describe(first)
            return text + f" (+{len(node) - 1} more)" if isinstance(node, list) and len(node) > 1 else text
    tcp = fields.get("tcp")
    if isinstance(tcp, dict):
        return (
            f"{tcp.get('srcport')} -> {tcp.get('dstport')} {_tcp_flags(tcp.get('flags') or {})} "
            f"Seq={tcp.get('seq')} Ack={tcp.get('ack')} Win={tcp.get('window_size')} Len={tcp.get('len')}"
        )
    udp = fields.get("udp")
    if isinstance(udp, dict):
        return f"{udp.get('srcport')} -> {udp.get('dstport')} Len={max(0, (udp.get('length') or 8) - 8)}"
    for name in ("icmp", "icmpv6"):
        icmp = fields.get(name)
        if isinstance(icmp, dict):
            text = f"type={icmp.get('type')} code={icmp.get('code')}"
            if "ident" in icmp:
                text += f" id=0x{icmp['ident']:04x} seq={icmp.get('seq')}"
            return text
    arp = fields.get("arp")
    if isinstance(arp, dict):
        s, d = arp.get("src", {}), arp.get("dst", {})
        if arp.get("opcode") == 1:
            return f"Who has {d.get('proto_ipv4', '?')}? Tell {s.get('proto_ipv4', '?')}"
        if arp.get("opcode") == 2:
            return f"{s.get('proto_ipv4', '?')} is at {s.get('hw_mac', '?')}"
        return f"opcode {arp.get('opcode')}"
    for layer in ("ip", "ipv6"):
        hdr = fields.get(layer)
        if isinstance(hdr, dict) and "fragment" in hdr:
            return f"Fragmented IP protocol ({hdr['fragment']} fragment)"
    return ""


def summary_line(fields: dict[str, Any], time_relative: float) -> str:
    """number  time  src -> dst  PROTO  length  info"""
    frame = fields.get("frame", {})
    src, dst = addresses(fields)
    return (
        f"{frame.get('number', 0):>6} {time_relative:>11.6f} {safe(src):>15} -> {safe(dst):<15} "
        f"{protocol(fields):<6} {frame.get('len', 0):>5} {info(fields)}"
    )
