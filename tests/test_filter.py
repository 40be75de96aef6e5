"""Display filters: grammar, semantics on nested packet dicts, and error messages with columns."""

from __future__ import annotations

import copy

import pytest

from services.cli.filter import FilterError, compile_filter

TLS_PKT = {
    "frame": {"number": 4, "len": 583, "protocols": "eth:ethertype:ip:tcp"},
    "eth": {"src": "00:01:2e:83:65:d9", "dst": "9c:80:df:20:7a:44", "type": 2048},
    "ip": {
        "src": "192.168.0.253",
        "dst": "151.101.36.133",
        "ttl": 64,
        "proto": 6,
        "flags": {"value": 2, "df": 1},
    },
    "tcp": {
        "srcport": 49584,
        "dstport": 443,
        "len": 517,
        "flags": {"value": 0x18, "syn": 0, "ack": 1, "psh": 1, "fin": 0, "rst": 0},
    },
    "tls": {"sni": "Raw.GitHubUserContent.com", "alpn": ["h2", "http/1.1"], "ja3_hash": "abc123"},
}
DNS_PKT = {
    "frame": {"number": 7, "len": 90},
    "ipv6": {"src": "2001:db8::1", "dst": "fe80::53"},
    "udp": {"srcport": 5353, "dstport": 53, "length": 40},
    "dns": {
        "id": 0x1234,
        "flags": {"response": True},
        "queries": [{"name": "example.com", "type": "A"}, {"name": "www.example.org", "type": "AAAA"}],
        "answers": [{"name": "example.com", "type": "A", "ttl": 300, "data": "93.184.216.34", "a": "93.184.216.34"}],
    },
}
SYN_PKT = {
    "frame": {"number": 1, "len": 74},
    "ip": {"src": "10.1.2.3", "dst": "10.9.9.9"},
    "tcp": {"srcport": 1025, "dstport": 80, "flags": {"value": 2, "syn": 1, "ack": 0}},
    "raw": b"\x16\x03\x01\x00",
}
ARP_PKT = {
    "frame": {"number": 2},
    "eth": {"src": "aa:bb:cc:dd:ee:ff", "dst": "ff:ff:ff:ff:ff:ff"},
    "arp": {"opcode": 1},
}
ALL = {"tls": TLS_PKT, "dns": DNS_PKT, "syn": SYN_PKT, "arp": ARP_PKT}


def matching(expr: str) -> set[str]:
    pred = compile_filter(expr, strict=False)  # made-up packets carry made-up keys ("raw")
    return {name for name, pkt in ALL.items() if pred(pkt)}


@pytest.mark.parametrize(
    "expr, expected",
    [
        # protocol atoms and bare fields
        ("tcp", {"tls", "syn"}),
        ("udp", {"dns"}),
        ("ip", {"tls", "syn"}),
        ("ipv6", {"dns"}),
        ("arp", {"arp"}),
        ("tls", {"tls"}),
        ("tls.sni", {"tls"}),
        ("dns.answers", {"dns"}),
        ("icmp", set()),
        ("", {"tls", "dns", "syn", "arp"}),
        # numbers: decimal, hex, word operators
        ("tcp.dstport == 443", {"tls"}),
        ("tcp.dstport eq 443", {"tls"}),
        ("tcp.dstport == 0x1bb", {"tls"}),
        ("tcp.len > 500", {"tls"}),
        ("tcp.len gt 500", {"tls"}),
        ("tcp.srcport >= 49584", {"tls"}),
        ("tcp.srcport ge 49585", set()),
        ("tcp.dstport < 443", {"syn"}),
        ("tcp.dstport lt 80", set()),
        ("tcp.dstport <= 80", {"syn"}),
        ("tcp.dstport le 79", set()),
        ("tcp.dstport ne 80", {"tls"}),
        # either-direction fields
        ("tcp.port == 49584", {"tls"}),
        ("tcp.port == 443", {"tls"}),
        ("udp.port == 5353", {"dns"}),
        ("ip.addr == 151.101.36.133", {"tls"}),
        ("ip.addr == 192.168.0.253", {"tls"}),
        ("ip.src == 151.101.36.133", set()),
        ("ip.dst == 151.101.36.133", {"tls"}),
        ("eth.addr == ff:ff:ff:ff:ff:ff", {"arp"}),
        ("eth.addr == AA-BB-CC-DD-EE-FF", {"arp"}),
        ("eth.src == 00:01:2E:83:65:D9", {"tls"}),
        # CIDR, IPv4 and IPv6
        ("ip.addr == 10.0.0.0/8", {"syn"}),
        ("ip.addr == 192.168.0.0/16", {"tls"}),
        ("ip.dst == 192.168.0.0/16", set()),
        ("ip.addr == 0.0.0.0/0", {"tls", "syn"}),
        ("ipv6.addr == 2001:db8::/32", {"dns"}),
        ("ipv6.src == 2001:db8:0:0::1", {"dns"}),
        ("ipv6.dst == fe80::/10", {"dns"}),
        ("ipv6.addr == 2001:db9::/32", set()),
        ("ip.addr in {10.0.0.0/8 192.168.0.0/16}", {"tls", "syn"}),
        ("ip.src > 10.1.2.2 and ip.src < 10.1.2.4", {"syn"}),
        # {value: ..} nodes, booleans
        ("tcp.flags == 0x18", {"tls"}),
        ("tcp.flags == 2", {"syn"}),
        ("tcp.flags.syn == 1", {"syn"}),
        ("tcp.flags.syn == true", {"syn"}),
        ("tcp.flags.syn", {"tls", "syn"}),  # present on every TCP packet, as in Wireshark
        ("dns.flags.response == 1", {"dns"}),
        ("dns.flags.response == true", {"dns"}),
        ("dns.flags.response == false", set()),
        ("ip.flags.df == 1", {"tls"}),
        # strings, quoted with escapes, and bare
        ('tls.sni == "Raw.GitHubUserContent.com"', {"tls"}),
        ('tls.sni == "raw.githubusercontent.com"', set()),  # == is case-sensitive
        ("tls.sni == Raw.GitHubUserContent.com", {"tls"}),
        ('tls.ja3_hash == "abc\\x31\\u00323"', {"tls"}),
        ('tls.sni != "x"', {"tls"}),
        # contains
        ('tls.sni contains "GitHub"', {"tls"}),
        ('tls.sni contains "github"', set()),
        ('tls.alpn contains "h2"', {"tls"}),
        ("raw contains 16:03:01", {"syn"}),
        ('raw contains "\\x16\\x03"', {"syn"}),
        ("tcp.flags contains 2", {"syn"}),
        # matches / ~ (case-insensitive)
        ('tls.sni matches "githubuser"', {"tls"}),
        ('tls.sni ~ "^raw\\.github"', {"tls"}),
        ('tls.sni matches "^github"', set()),
        ('dns.qry.name matches "\\.org$"', {"dns"}),
        ('tcp.dstport matches "^44"', {"tls"}),
        # lists: any element
        ("dns.qry.name == example.com", {"dns"}),
        ('dns.qry.name == "www.example.org"', {"dns"}),
        ("dns.queries.name == www.example.org", {"dns"}),
        ("dns.queries[].name == www.example.org", {"dns"}),
        ("dns.qry.type == AAAA", {"dns"}),
        ("dns.resp.name == example.com", {"dns"}),
        ("dns.resp.name == www.example.org", set()),
        ("dns.a == 93.184.216.34", {"dns"}),
        ("dns.resp.ttl > 100", {"dns"}),
        ("dns.name == www.example.org", {"dns"}),
        ("dns.type == A", {"dns"}),
        # != is "no value equals" (and false when the field is absent)
        ("dns.qry.name != example.com", set()),
        ("dns.qry.name != nothing.test", {"dns"}),
        ("tcp.port != 443", {"syn"}),
        ("tcp.port != 80", {"tls"}),
        ("!(tcp.port == 80)", {"tls", "dns", "arp"}),
        # in {...}: values, ranges, commas, strings
        ("tcp.port in {80 443}", {"tls", "syn"}),
        ("tcp.port in {80, 8080}", {"syn"}),
        ("tcp.dstport in {1..1024}", {"tls", "syn"}),
        ("tcp.srcport in {1..1024}", set()),
        ("tcp.srcport in {1024..1025 49000..50000}", {"tls", "syn"}),
        ('dns.qry.type in {"AAAA" "MX"}', {"dns"}),
        ("udp.port in {0x35}", {"dns"}),
        # boolean logic and precedence
        ("tcp and tls", {"tls"}),
        ("tcp && !tls", {"syn"}),
        ("tcp and not tls", {"syn"}),
        ("udp or arp", {"dns", "arp"}),
        ("udp || arp", {"dns", "arp"}),
        ("not tcp", {"dns", "arp"}),
        ("!!tcp", {"tls", "syn"}),
        ("not not tcp", {"tls", "syn"}),
        ("arp or tcp and tls", {"arp", "tls"}),  # and binds tighter
        ("(arp or tcp) and tls", {"tls"}),
        ("((udp))", {"dns"}),
        ("tcp and tcp.port == 80 or udp and dns.qry.type == A", {"syn", "dns"}),
        ("tcp.port==443&&ip.src==192.168.0.253", {"tls"}),
        ("tcp.port == 80 and tcp.flags.syn == 1 and not tcp.flags.ack == 1", {"syn"}),
        # absent fields never match a comparison
        ("quic.sni == x", set()),
        ("http.host contains x", set()),
        ("tcp.flags.bogus == 1", set()),
        # aliases
        ('tls.handshake.extensions_server_name contains "github"', set()),
        ('tls.handshake.extensions_server_name contains "GitHub"', {"tls"}),
    ],
)
def test_filter_semantics(expr, expected):
    assert matching(expr) == expected


def test_filter_does_not_modify_packets():
    before = copy.deepcopy(ALL)
    for expr in ("dns.name == x", "tcp.port in {1..2}", "tls.alpn contains h2", "ip.addr == 10.0.0.0/8"):
        matching(expr)
    assert before == ALL


def test_filter_handles_odd_values():
    pred = compile_filter('x.y == "a" or x.y > 3 or x.y contains "q" or x.y ~ "z"', strict=False)
    for value in (None, [], [None], {"value": None}, 1.5, b"\xff", [[1, 2]], {"a": 1}, True):
        assert pred({"x": {"y": value}}) in (True, False)
    assert pred({"x": {"y": [[5]]}})  # nested lists walked
    assert pred({"x": "not a dict"}) is False


@pytest.mark.parametrize(
    "expr, column, message",
    [
        ("tcp.port == ", 13, "expected a value after '=='"),
        ("tcp.port ==", 12, "expected a value after '=='"),
        ("tcp.port eq", 12, "expected a value after 'eq'"),
        ("tcp.port == and udp", 13, "expected a value after '=='"),
        ("tcp.port ==== 80", 10, "unknown operator '===='"),
        ("tcp.port => 80", 10, "unknown operator '=>'"),
        ("tcp.port equals 80", 10, "unknown operator 'equals'"),
        ("tcp.port ! 80", 10, "unknown operator '!'"),
        ("(tcp", 5, "expected ')' to close the '(' at column 1"),
        ("((tcp) or (udp)", 16, "expected ')' to close the '(' at column 1"),
        ("tcp)", 4, "unexpected ')'"),
        ("()", 2, "expected a test inside '()'"),
        ("tcp and", 8, "expected a test after 'and'"),
        ("tcp ||", 7, "expected a test after '||'"),
        ("not", 4, "expected a test after 'not'"),
        ("and tcp", 1, "expected a field or protocol name, got 'and'"),
        ("== 80", 1, "expected a field or protocol name, got '=='"),
        ("80 == tcp.port", 1, "'80' is not a field name"),
        ('tls.sni matches "("', 17, "bad regular expression"),
        ('tls.sni ~ "[a-"', 11, "bad regular expression"),
        ("tls.sni matches", 16, "expected a quoted regular expression after 'matches'"),
        ("ip.addr == 10.0.0.0/33", 12, "bad CIDR '10.0.0.0/33'"),
        ("ip.addr == 10.0.0.300/8", 12, "bad CIDR"),
        ("ipv6.addr == ::1/129", 14, "bad CIDR"),
        ("ip.addr > 10.0.0.0/8", 11, "a CIDR network cannot be used"),
        ("tcp.port in 80", 13, "expected '{' after 'in'"),
        ("tcp.port in {80 443", 20, "expected '}' to close the set opened at column 13"),
        ("tcp.port in {}", 13, "expected at least one value"),
        ("tcp.port in {1..}", 14, "expected a range"),
        ('tls.sni == "abc', 12, "unterminated string"),
        ('tls.sni == "\\x4"', 13, "expected two hex digits"),
        ("tcp $ udp", 5, "unsupported: field references and macros ('$')"),
        ("tcp ` udp", 5, "unexpected character '`'"),
        ("tcp udp", 5, "unknown operator 'udp'"),
        ("tcp.port == 80 udp", 16, "expected 'and', 'or' or the end of the filter, got 'udp'"),
        ("tcp.port == 80)", 15, "unexpected ')'"),
        ("eth.src[0:x] == 00:01:02", 8, "bad slice"),
        ("eth.src[3-1] == 00:01:02", 8, "bad slice [3-1]"),
    ],
)
def test_filter_errors_name_the_column(expr, column, message):
    with pytest.raises(FilterError) as info:
        compile_filter(expr)
    err = info.value
    assert err.column == column, str(err)
    assert message in err.message
    assert str(err).startswith(f"column {column}: ")


def test_exact_message_for_missing_value():
    with pytest.raises(FilterError, match=r"^column 13: expected a value after '=='$"):
        compile_filter("tcp.port == ")


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter("(" * 500 + "tcp" + ")" * 500)
    assert compile_filter("(" * 30 + "tcp" + ")" * 30)(SYN_PKT)
    assert compile_filter("!" * 1001 + "tcp")(ARP_PKT)  # odd number of negations


def test_compiled_filter_is_reused_per_packet():
    """Compile once, evaluate per packet (its speed is a benchmark's business, not a test's)."""
    pred = compile_filter('tcp.port in {80 443} and ip.addr == 192.168.0.0/16 and tls.sni contains "Git"')
    assert all(pred(TLS_PKT) for _ in range(100))
    assert not pred(SYN_PKT)  # no SNI in a bare SYN


def test_long_chains_do_not_recurse():
    pred = compile_filter(" or ".join(f"tcp.port == {i}" for i in range(3000)))
    assert pred({"tcp": {"srcport": 2999}}) and not pred({"tcp": {"srcport": 5000}})
    pred = compile_filter(" and ".join(["tcp"] * 3000))
    assert pred(SYN_PKT) and not pred(DNS_PKT)
