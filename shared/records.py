"""Shapes of the tuples that travel inside frames.

Tuples, not objects: one per packet, built and unpacked millions of times. Index constants
name the fields so that code reads ``rec[R_SPORT]`` rather than ``rec[5]``.
"""

from __future__ import annotations

# --- capture -> decoder: one per captured packet -------------------------------------------
# (num, ts, linktype, wirelen, data)
#   num      packet number in the capture, from 1 (as Wireshark counts)
#   ts       seconds since the epoch, float
#   linktype libpcap DLT/LINKTYPE number of the source (1 Ethernet, 113 SLL, 276 SLL2, 0 null, 101 raw)
#   wirelen  length on the wire (>= len(data); equals len(data) when pypcap cannot tell)
#   data     the captured bytes
P_NUM, P_TS, P_LINKTYPE, P_WIRELEN, P_DATA = range(5)

# --- decoder -> flow-tracker: one per decoded IP packet ---------------------------------------
# (num, ts, wirelen, proto, src, dst, sport, dport, tcp_flags, paylen, frag, tcp_seq, app)
#   proto      IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, others as found)
#   src, dst   raw address bytes, 4 (IPv4) or 16 (IPv6)
#   sport/dport ports for TCP/UDP; 0 for others and for non-first fragments
#   tcp_flags  TCP flag bits (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 ...), 0 otherwise
#   paylen     bytes of L4 payload
#   frag       FRAG_NONE, FRAG_FIRST or FRAG_LATER
#   tcp_seq    TCP sequence number; ICMP/ICMPv6: type << 8 | code (-1 for a non-first fragment);
#              0 otherwise
#   app        None, or a dict of application-layer fields found in/completed by this packet,
#              keyed by display-filter names, e.g. {"tls.sni": "example.com"} or
#              {"dns.answers": [[name, type, ttl, data], ...], "dns.queries": [[name, type], ...]}
(
    R_NUM,
    R_TS,
    R_WIRELEN,
    R_PROTO,
    R_SRC,
    R_DST,
    R_SPORT,
    R_DPORT,
    R_FLAGS,
    R_PAYLEN,
    R_FRAG,
    R_SEQ,
    R_APP,
) = range(13)

FRAG_NONE, FRAG_FIRST, FRAG_LATER = 0, 1, 2

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
