"""Which field names pktscope can evaluate, so that any other name is an error, never a silent miss.

A filter naming a field pktscope does not decode (``tcp.analysis.retransmission``) or a
misspelt one would match nothing, which reads as "no such traffic". Instead it is rejected
with "unsupported: ...", as tshark rejects names it does not know.

``FIELDS`` lists the names of the decoders' output (docs/filters.md) and the Wireshark names
of fields.ALIASES; ``OPEN_PREFIXES`` are subtrees whose keys come from the packet (layers in
front of a VXLAN header). A protocol atom alone (``tcp``) is a field too.
"""

from __future__ import annotations

from .fields import ALIASES
from .lexer import FilterError

PROTOCOLS = frozenset(  # noqa: SIM905 -- a word list reads best as text
    ["frame", "eth", "sll", "null", "chdlc", "raw", "vlan", "pppoes", "ppp", "mpls", "vxlan", "gre", "erspan", "geneve", "cfp", "arp", "ip", "ipv6", "tcp", "udp", "icmp", "icmpv6", "dns", "llmnr", "mdns", "http", "http2", "tls", "quic", "data", "_malformed"]
)
# Layers that are only a presence test here (pktscope keeps no per-layer bytes); `frame` has them.
PROTOCOL_ONLY = PROTOCOLS - {"frame", "raw"}

FIELDS = frozenset(  # noqa: SIM905
    ["frame.number", "frame.time_epoch", "frame.time_relative", "frame.len", "frame.cap_len", "frame.linktype", "frame.protocols", "eth.src", "eth.dst", "eth.type", "eth.addr", "sll.pkttype", "sll.hatype", "sll.halen", "sll.etype", "sll.src", "sll.src.eth", "sll.ifindex", "null.family", "chdlc.address", "chdlc.control", "chdlc.protocol", "vlan.id", "vlan.priority", "vlan.dei", "vlan.etype", "vlan.inner", "pppoes.version", "pppoes.type", "pppoes.code", "pppoes.session_id", "pppoes.payload_length", "ppp.protocol", "mpls.label", "mpls.labels", "mpls.exp", "mpls.bottom", "mpls.ttl", "vxlan.vni", "vxlan.flags", "vxlan.outer", "vxlan.inner_malformed", "gre.proto", "gre.flags_and_version", "gre.flags.checksum", "gre.flags.routing", "gre.flags.key", "gre.flags.sequence_number", "gre.flags.version", "gre.key", "gre.sequence_number", "gre.outer", "ipip.outer", "erspan.version", "erspan.vlan", "erspan.spanid", "erspan.cos", "erspan.index", "erspan.direction", "geneve.version", "geneve.vni", "geneve.proto_type", "geneve.flags", "geneve.flags.oam", "geneve.flags.critical", "geneve.outer", "cfp.etype", "cfp.ftag", "cfp.ttl", "cfp.swid", "cfp.sswid", "cfp.lid", "cfp.outer", "arp.opcode", "arp.hw.type", "arp.hw.size", "arp.proto.type", "arp.proto.size", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.src.proto_ipv6", "arp.dst.hw_mac", "arp.dst.proto_ipv4", "arp.dst.proto_ipv6", "arp.hw", "arp.proto", "arp.src", "arp.dst", "ip.version", "ip.hdr_len", "ip.dsfield", "ip.dsfield.dscp", "ip.dsfield.ecn", "ip.len", "ip.id", "ip.flags", "ip.flags.rb", "ip.flags.df", "ip.flags.mf", "ip.frag_offset", "ip.ttl", "ip.proto", "ip.checksum", "ip.src", "ip.dst", "ip.fragment", "ipv6.version", "ipv6.tclass", "ipv6.flow", "ipv6.plen", "ipv6.nxt", "ipv6.hlim", "ipv6.src", "ipv6.dst", "ipv6.fragment", "ipv6.hopopts", "ipv6.hopopts.nxt", "ipv6.hopopts.len", "ipv6.routing", "ipv6.routing.nxt", "ipv6.routing.len", "ipv6.dstopts", "ipv6.dstopts.nxt", "ipv6.dstopts.len", "ipv6.ah", "ipv6.ah.nxt", "ipv6.ah.len", "ipv6.fraghdr", "ipv6.fraghdr.nxt", "ipv6.fraghdr.offset", "ipv6.fraghdr.more", "ipv6.fraghdr.ident", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.ack", "tcp.seq_raw", "tcp.ack_raw", "tcp.hdr_len", "tcp.len", "tcp.flags", "tcp.flags.fin", "tcp.flags.syn", "tcp.flags.rst", "tcp.flags.psh", "tcp.flags.ack", "tcp.flags.urg", "tcp.flags.ece", "tcp.flags.cwr", "tcp.flags.ae", "tcp.flags.res", "tcp.window_size", "tcp.checksum", "tcp.urgent_pointer", "udp.srcport", "udp.dstport", "udp.length", "udp.checksum", "icmp.type", "icmp.code", "icmp.checksum", "icmp.ident", "icmp.seq", "icmpv6.type", "icmpv6.code", "icmpv6.checksum", "icmpv6.ident", "icmpv6.seq", "dns.id", "dns.flags", "dns.flags.response", "dns.opcode", "dns.rcode", "dns.queries", "dns.answers", "dns.authorities", "dns.additionals", "dns.queries.name", "dns.queries.type", "dns.answers.name", "dns.answers.type", "dns.answers.ttl", "dns.answers.data", "dns.authorities.name", "dns.authorities.type", "dns.authorities.ttl", "dns.authorities.data", "dns.additionals.name", "dns.additionals.type", "dns.additionals.ttl", "dns.additionals.data", "dns.count.queries", "dns.count.answers", "dns.count.auth_rr", "dns.count.add_rr", "dns.malformed", "http.method", "http.uri", "http.version", "http.host", "http.user_agent", "http.content_type", "http.status", "http.request", "http.response", "http.request_version", "http.response_version", "http2.type", "http2.streamid", "http2.headers.method", "http2.headers.path", "http2.headers.authority", "http2.headers.scheme", "http2.headers.status", "http2.headers.user_agent", "tls.version", "tls.sni", "tls.alpn", "tls.cipher_suites", "tls.extensions", "tls.supported_groups", "tls.ec_point_formats", "tls.sig_algs", "tls.supported_versions", "tls.ja3", "tls.ja3_hash", "tls.ja4", "tls.negotiated_version", "tls.cipher_suite", "tls.alpn_selected", "tls.ja3s", "tls.ja3s_hash", "tls.cert", "tls.cert.subject", "tls.cert.issuer", "tls.cert.san", "tls.record", "tls.record.content_type", "tls.record.version", "tls.record.length", "tls.handshake", "tls.handshake.type", "tls.handshake.version", "quic.version", "quic.sni", "quic.alpn", "quic.ja3", "quic.ja3_hash", "quic.ja4", "quic.header_form", "quic.long.packet_type", "quic.dcid", "quic.scid"]
) | frozenset(ALIASES) | PROTOCOLS

OPEN_PREFIXES = ("ipip.outer.", "vxlan.outer.", "gre.outer.", "geneve.outer.", "cfp.outer.", "vlan.inner.", "_")


def is_field_name(name: str) -> bool:
    """True when ``name`` is a field pktscope evaluates (aliases included)."""
    bare = name.replace("[]", "")
    return bare in FIELDS or bare.startswith(OPEN_PREFIXES)


def check_field(name: str, col: int, strict: bool = True) -> None:
    """Raise FilterError("unsupported: ...") for a name pktscope does not decode."""
    if not strict or is_field_name(name):
        return
    proto = name.split(".", 1)[0]
    if proto in PROTOCOLS:
        raise FilterError(col, f"unsupported: field '{name}' is not decoded by pktscope (docs/filters.md lists them)")
    raise FilterError(col, f"unsupported: '{name}' is not a protocol or field pktscope decodes (docs/filters.md)")
