"""DNS decoding: record types, names, and hostile messages (loops, absurd counts, truncation)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from services.decoder.app import AppInspector
from services.decoder.app.dns import ROOT_NAME, DnsError, parse_message, read_name
from services.decoder.app.dns_types import type_name

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 53])


def name(text: str) -> bytes:
    out = b"".join(bytes([len(p)]) + p.encode() for p in text.split(".") if p)
    return out + b"\x00"


def header(ident=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def rr(owner: bytes, rtype: int, data: bytes, ttl: int = 300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data


def test_query_and_answers_of_common_types():
    q = name("example.com")
    msg = (
        header(an=7, ar=1)
        + q
        + struct.pack("!HH", 1, 1)
        + rr(b"\xc0\x0c", 1, bytes([93, 184, 216, 34]))
        + rr(b"\xc0\x0c", 28, bytes(15) + b"\x01")
        + rr(b"\xc0\x0c", 5, name("www.example.net"))
        + rr(b"\xc0\x0c", 15, b"\x00\x0a" + b"\xc0\x0c")
        + rr(b"\xc0\x0c", 16, b"\x05hello\x05world")
        + rr(b"\xc0\x0c", 33, struct.pack("!HHH", 1, 2, 443) + name("srv.example.com"))
        + rr(b"\xc0\x0c", 65, b"\x00\x01" + b"\x00" + b"\x00\x01\x00\x03\x02h2")
        + rr(b"\x00", 41, b"")
    )
    f = parse_message(msg)
    assert f["dns.id"] == 0x1234 and f["dns.flags.response"] is True and f["dns.rcode"] == 0
    assert f["dns.queries"] == [["example.com", "A"]]
    answers = f["dns.answers"]
    assert [a[1] for a in answers] == ["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "HTTPS"]
    assert answers[0] == ["example.com", "A", 300, "93.184.216.34"]
    assert answers[1][3] == "::1"
    assert answers[2][3] == "www.example.net"
    assert answers[3][3] == "10 example.com"
    assert answers[4][3] == "helloworld"
    assert answers[5][3] == "1 2 443 srv.example.com"
    assert answers[6][3].startswith("1 <root>")
    assert f["dns.additionals"][0][:2] == [ROOT_NAME, "OPT"]


def test_soa_in_authority_null_and_unknown_types_as_hex():
    soa = name("ns1.example.com") + name("admin.example.com") + struct.pack("!IIIII", 7, 1, 2, 3, 4)
    msg = (
        header(qd=1, an=2, ns=1, flags=0x8183)
        + name("x.example.com")
        + struct.pack("!HH", 10, 1)
        + rr(b"\xc0\x0c", 10, b"\x00\xff")
        + rr(b"\xc0\x0c", 4242, b"\xde\xad")
        + rr(name("example.com"), 6, soa)
    )
    f = parse_message(msg)
    assert f["dns.rcode"] == 3
    assert f["dns.queries"] == [["x.example.com", "NULL"]]
    assert f["dns.answers"][0][1:] == ["NULL", 300, "00ff"]
    assert f["dns.answers"][1][1:] == ["TYPE4242", 300, "dead"]
    assert f["dns.authorities"][0][3] == "ns1.example.com admin.example.com 7 1 2 3 4"
    assert type_name(255) == "ANY" and type_name(16) == "TXT"


def test_root_name_and_control_characters_escaped():
    msg = header(flags=0x0100) + b"\x00" + struct.pack("!HH", 2, 1)
    assert parse_message(msg)["dns.queries"] == [[ROOT_NAME, "NS"]]
    evil = header(flags=0x0100) + b"\x04a\x1bb\xff\x03com\x00" + struct.pack("!HH", 1, 1)
    assert parse_message(evil)["dns.queries"][0][0] == "a\\x1bb\\xff.com"


@pytest.mark.parametrize(
    "wire",
    [
        b"\xc0\x0c",  # points at itself
        b"\x01a\xc0\x0c",  # label then pointer back to its own start
        b"\xc0\x20",  # forward pointer
        b"\x3fabc",  # label longer than the message
        b"\x80x",  # reserved label type
        b"\x01a" * 200 + b"\x00",  # longer than any real name
    ],
)
def test_hostile_names_raise_dns_error(wire):
    msg = header(flags=0x0100) + wire + struct.pack("!HH", 1, 1)
    with pytest.raises(DnsError):
        read_name(msg, 12)


def test_mutual_compression_loop_in_answer_keeps_what_was_read():
    q = name("ok.example")
    # answer owner points at offset 30, which points back at offset 28 (the pointer itself)
    body = header(an=2) + q + struct.pack("!HH", 1, 1)
    good = rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04")
    start = len(body) + len(good)
    loop = struct.pack("!H", 0xC000 | (start + 2)) + struct.pack("!H", 0xC000 | start)
    counters = Counter()
    f = parse_message(body + good + loop + struct.pack("!HHIH", 1, 1, 0, 0), counters)
    assert f["dns.answers"] == [["ok.example", "A", 300, "1.2.3.4"]]
    assert counters["dns_record_errors"] == 1


def test_absurd_counts_are_bounded_and_truncation_counted():
    counters = Counter()
    msg = header(qd=1, an=65535, ns=65535, ar=65535) + name("a.b") + struct.pack("!HH", 1, 1)
    msg += rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04") * 3
    f = parse_message(msg, counters)
    assert len(f["dns.answers"]) == 3
    assert counters["dns_record_errors"] == 1
    with pytest.raises(DnsError):
        parse_message(header(qd=65535) + name("a.b"))
    with pytest.raises(DnsError):
        parse_message(b"\x00\x01\x02")
    # 5000 records that all parse: only MAX_RECORDS are decoded
    many = header(qd=0, an=5000) + (rr(b"\x00", 1, b"\x01\x02\x03\x04") * 5000)
    counters = Counter()
    assert len(parse_message(many, counters)["dns.answers"]) == 256
    assert counters["dns_records_over_bound"] == 1


def test_dns_over_udp_and_tcp_through_the_inspector():
    query = header(flags=0x0100, ident=7) + name("tcp.example") + struct.pack("!HH", 16, 1)
    insp = AppInspector()
    f = insp.inspect(1.0, 17, CLIENT, SERVER, 5555, 53, 0, 0, query)
    assert f["dns.queries"] == [["tcp.example", "TXT"]] and f["dns.flags.response"] is False

    framed = struct.pack("!H", len(query)) + query
    insp.inspect(2.0, 6, CLIENT, SERVER, 4000, 53, 0x02, 100, b"")
    # first message split across two segments, a second one completed in the same segment
    assert insp.inspect(2.1, 6, CLIENT, SERVER, 4000, 53, 0x18, 101, framed[:5]) is None
    rest = framed[5:] + framed
    f = insp.inspect(2.2, 6, CLIENT, SERVER, 4000, 53, 0x18, 106, rest)
    assert f["dns.id"] == 7 and len(f["more"]) == 1 and f["more"][0]["dns.id"] == 7
    assert insp.counters["flows_dns_tcp"] == 1


def test_malformed_udp_dns_is_counted_not_raised():
    insp = AppInspector()
    assert insp.inspect(1.0, 17, CLIENT, SERVER, 5555, 53, 0, 0, b"\x00\x01") is None
    assert insp.counters["dns_parse_errors"] == 1
