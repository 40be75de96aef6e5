"""Per-packet fields the way Wireshark lays them out, for `pktscope read` and its display filters.

The decoder's application fields are built for the pipeline: one record per completed message,
flows dropped once named. Display filters are typed from Wireshark's point of view, so `read`
adds here what Wireshark shows on each frame:

* DNS record types compare by number or mnemonic (``dns.qry.type == 28`` and ``== AAAA``);
  ``dns.a`` / ``dns.aaaa`` are the A / AAAA records' addresses of every section;
* an HTTP/1 message on the frame that completes it, body included (services/cli/http_frames.py),
  with ``http.request`` / ``http.response`` and their versions;
* mDNS (5353) and LLMNR (5355) are their own protocols: their messages keep the ``dns.*``
  fields but the protocol atom is ``mdns`` / ``llmnr``, not ``dns``;
* a UDP datagram to or from port 53 whose message does not decode keeps a ``dns`` layer
  marked ``dns.malformed`` (Wireshark: "Malformed Packet"), as Wireshark keeps the layer;
* TLS records and QUIC packets of every frame of such flows (services/cli/record_layers.py);
* ``tcp.seq`` / ``tcp.ack`` relative to the connection's first sequence number, as Wireshark
  shows them by default (the wire values are ``tcp.seq_raw`` / ``tcp.ack_raw``): 0 on the SYN,
  1 on the first byte; a connection first seen mid-stream starts at 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from services.decoder.app.dns import DnsError, parse_message
from services.decoder.app.dns_types import TYPE_NAMES

from .filter.values import Mnemonic
from .http_frames import HttpFrames
from .record_layers import RecordLayers

_TYPE_NUMBERS = {name: num for num, name in TYPE_NAMES.items()}
_SECTIONS = ("queries", "answers", "authorities", "additionals")
_OWN_PROTOCOL_PORTS = {5353: "mdns", 5355: "llmnr"}
MAX_TCP_DIRECTIONS = 100_000  # first sequence numbers remembered (oldest forgotten)


def _type_value(name: object) -> object:
    if type(name) is not str:
        return name
    num = _TYPE_NUMBERS.get(name)
    if num is None and name.startswith("TYPE") and name[4:].isdigit():
        num = int(name[4:])
    return name if num is None else Mnemonic(name, num)


def _dns_node(node: dict[str, Any]) -> None:
    flags = node.get("flags")
    if isinstance(flags, dict) and not flags.get("response") and "rcode" in node:
        # Wireshark shows the reply code of responses only
        del node["rcode"]
    for section in _SECTIONS:
        records = node.get(section)
        if not isinstance(records, list):
            continue
        for rec in records:
            if not isinstance(rec, dict):
                continue
            rtype = rec.get("type")
            rec["type"] = _type_value(rtype)
            if rtype == "OPT" and "ttl" in rec:  # EDNS: the "TTL" holds extended flags, not a TTL
                rec["ext_flags"] = rec.pop("ttl")
            if section != "queries" and rtype in ("A", "AAAA"):
                rec[rtype.lower()] = rec.get("data")


def _http_node(node: dict[str, Any]) -> None:
    version = node.get("version")
    if "method" in node:
        node["request"] = True
        if version is not None:
            node["request_version"] = version
    if "status" in node:
        node["response"] = True
        if version is not None:
            node["response_version"] = version


def _each(node: Any) -> list:
    if isinstance(node, list):
        return [n for n in node if isinstance(n, dict)]
    return [node] if isinstance(node, dict) else []


class WiresharkView:
    """Adds the Wireshark-shaped fields to each packet of one file, in order (keeps per-flow state)."""

    def __init__(self) -> None:
        self.records = RecordLayers()
        self.http = HttpFrames()
        self.isn: OrderedDict[tuple, int] = OrderedDict()

    def add(self, fields: dict[str, Any], l4: tuple | None) -> None:
        # most packets carry no application layer: each step below is one membership test then
        tcp = fields.get("tcp")
        if tcp is not None:
            self._relative(fields, tcp)
        if l4 is None:
            return
        proto = l4[0]
        if proto == 6:
            self.http.add(fields, l4)
        if "http" in fields:
            for node in _each(fields["http"]):
                _http_node(node)
        dns = fields.get("dns")
        if dns is not None:
            for node in _each(dns):
                _dns_node(node)
        if proto == 17:
            sport, dport = l4[3], l4[4]
            own = _OWN_PROTOCOL_PORTS.get(dport) or _OWN_PROTOCOL_PORTS.get(sport)
            if own is not None and dns is not None:
                fields[own] = True
                fields["_not_dns"] = True
            elif dns is None and (sport == 53 or dport == 53) and l4[7] and "udp" in fields:
                fields["dns"] = _malformed_dns(l4[7])
            quic = fields.get("quic")
            if type(quic) is dict and ("sni" in quic or "ja4" in quic) and "tls" not in fields:
                # Wireshark dissects the ClientHello inside QUIC's Initial packets as TLS
                fields["tls"] = {"handshake": {"type": [1]}}
        self.records.add(fields, l4)

    def _relative(self, fields: dict[str, Any], tcp: Any) -> None:
        ip = fields.get("ip") or fields.get("ipv6")
        if type(tcp) is not dict or type(ip) is not dict:
            return
        src, dst = ip.get("src"), ip.get("dst")
        sport, dport, seq = tcp.get("srcport"), tcp.get("dstport"), tcp.get("seq", 0)
        flags = tcp["flags"]["value"] if type(tcp.get("flags")) is dict else 0
        isn = self.isn
        key = (src, dst, sport, dport)
        if flags & 0x02 or key not in isn:
            isn[key] = seq if flags & 0x02 else (seq - 1) & 0xFFFFFFFF
            if len(isn) > MAX_TCP_DIRECTIONS:
                isn.popitem(last=False)
        ack = tcp.get("ack", 0)
        tcp["seq_raw"] = seq
        tcp["ack_raw"] = ack
        tcp["seq"] = (seq - isn[key]) & 0xFFFFFFFF
        if flags & 0x10:
            back = (dst, src, dport, sport)
            if back not in isn:
                isn[back] = (ack - 1) & 0xFFFFFFFF
            tcp["ack"] = (ack - isn[back]) & 0xFFFFFFFF
        else:
            tcp["ack"] = 0


def _malformed_dns(payload: bytes) -> dict[str, Any]:
    """The dns layer of a port-53 datagram the decoder could not read: what its header says."""
    try:
        parsed = parse_message(payload)
        reason = "not read by the application decoder"
    except (DnsError, IndexError, ValueError) as exc:
        parsed = {}
        reason = str(exc) or type(exc).__name__
    node: dict[str, Any] = {"malformed": reason}
    if len(payload) >= 2:
        node["id"] = payload[0] << 8 | payload[1]
    if len(payload) >= 4:
        flags = payload[2] << 8 | payload[3]
        node["flags"] = {"value": flags, "response": bool(flags & 0x8000)}
        node["opcode"] = (flags >> 11) & 0xF
        node["rcode"] = flags & 0xF
    for key, value in parsed.items():
        if key == "dns.queries" and isinstance(value, list):
            node["queries"] = [{"name": q[0], "type": _type_value(q[1])} for q in value]
    return node


def public(fields: dict[str, Any]) -> dict[str, Any]:
    """The packet without the keys kept for filters only (raw bytes, outer-layer list)."""
    if "_raw" in fields or "_outer" in fields or "_not_dns" in fields:
        return {k: v for k, v in fields.items() if k not in ("_raw", "_outer", "_not_dns")}
    return fields


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('WiresharkView',))
