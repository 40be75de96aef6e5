"""Safe printing: names from the network can never put a control character on the terminal."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.packetview import merge_app, summary_line
from services.cli.read_flows import flow_line, flow_record
from services.cli.text import json_line, safe

RAW_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

OSC_TITLE = "\x1b]0;owned\x07"
CLEAR = "\x1b[2J"
CSI_C1 = "\x9b31m"


def test_safe_escapes_controls_and_bidi():
    assert safe(f"a{OSC_TITLE}b") == "a\\x1b]0;owned\\x07b"
    assert safe(CLEAR + CSI_C1) == "\\x1b[2J\\x9b31m"
    assert safe("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert safe("tab\there\nnl\x7f") == "tab\\x09here\\x0anl\\x7f"
    assert (
        safe("caf\u00e9.example \u4e2d\u6587") == "caf\u00e9.example \u4e2d\u6587"
    )  # printable Unicode kept


def test_safe_bytes_invalid_utf8_as_hex():
    assert safe(b"ok\xff\xc3\x28\x1b") == "ok\\xff\\xc3(\\x1b"
    assert safe(b"caf\xc3\xa9") == "caf\u00e9"
    assert safe("lone \udcff surrogate \ud800") == "lone \\xff surrogate \\ud800"


_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
_leaf = st.one_of(_text, st.binary(max_size=20), st.integers(), st.floats(), st.booleans(), st.none())
_tree = st.recursive(
    _leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4), max_leaves=20
)


@settings(max_examples=300, deadline=None)
@given(_tree)
def test_json_line_is_always_valid_json_without_raw_controls(value):
    line = json_line({"x": value})
    assert "\n" not in line
    assert not RAW_TERMINAL.search(line)
    line.encode("utf-8")  # printable on a UTF-8 terminal: no lone surrogates left
    assert isinstance(json.loads(line), dict)


@settings(max_examples=200, deadline=None)
@given(_text)
def test_safe_never_leaves_a_control_character(text):
    out = safe(text)
    assert not RAW_TERMINAL.search(out)
    out.encode("utf-8")


def test_json_line_keeps_strings_readable():
    line = json_line({"sni": f"a{OSC_TITLE}\u00e9", "raw": b"\x00\xff"})
    assert json.loads(line) == {"sni": f"a{OSC_TITLE}\u00e9", "raw": "00ff"}
    assert "\u00e9" in line  # ensure_ascii=False: non-ASCII names stay readable


def _packet(app: dict) -> dict:
    fields = {
        "frame": {"number": 3, "len": 100, "time_epoch": 1.0, "protocols": "eth:ethertype:ip:tcp"},
        "ip": {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6},
        "tcp": {"srcport": 1234, "dstport": 443, "flags": {"value": 0x18, "psh": 1, "ack": 1}},
    }
    merge_app(fields, app)
    return fields


def test_summary_line_escapes_names_the_decoder_left_raw():
    for app in (
        {"tls.sni": f"{OSC_TITLE}x.example", "tls.alpn": [CLEAR]},
        {"http.method": "GET", "http.uri": f"/{CLEAR}", "http.host": CSI_C1},
        {"dns.queries": [[f"{CLEAR}.example", "A"]], "dns.id": 1},
        {"quic.sni": "\u202eevil"},
    ):
        line = summary_line(_packet(app), 0.5)
        assert not RAW_TERMINAL.search(line), repr(line)
        assert "\\x1b" in line or "\\x9b" in line or "\\u202e" in line


def test_summary_line_shows_client_hello_sni():
    line = summary_line(_packet({"tls.sni": "example.com", "tls.ja3_hash": "x"}), 0.25)
    assert "TLS" in line and "Client Hello SNI=example.com" in line and "10.0.0.1 -> 10.0.0.2" in line


def test_flow_line_escapes_names():
    event = {
        "proto": 6,
        "src": "10.0.0.1",
        "sport": 40000,
        "dst": "10.0.0.2",
        "dport": 80,
        "outbound": True,
        "first": 0.0,
        "last": 1.0,
        "pkts_out": 1,
        "bytes_out": 60,
        "pkts_in": 0,
        "bytes_in": 0,
        "state": "established",
        "reason": "eos",
        "name": OSC_TITLE,
        "name_src": "dns",
        "app": {"http.host": OSC_TITLE + CLEAR + CSI_C1},
    }
    assert not RAW_TERMINAL.search(flow_line(event, 0.0))
    assert not RAW_TERMINAL.search(json_line(flow_record(event)))


def test_merge_app_nests_dotted_keys_and_dns_records():
    fields = _packet(
        {
            "dns.queries": [["a.example", "A"]],
            "dns.answers": [["a.example", "A", 60, "192.0.2.1"]],
            "dns.flags.response": True,
            "tls.ja3": "771,1,2,3,4",
            "tls.ja3.extra": "x",  # a deeper key under a scalar keeps the scalar as "value"
        }
    )
    assert fields["dns"]["queries"] == [{"name": "a.example", "type": "A"}]
    assert fields["dns"]["answers"] == [{"name": "a.example", "type": "A", "ttl": 60, "data": "192.0.2.1"}]
    assert fields["dns"]["flags"] == {"response": True}
    assert fields["tls"]["ja3"] == {"value": "771,1,2,3,4", "extra": "x"}


def test_several_messages_in_one_packet_become_a_list_the_filter_walks():
    from services.cli.filter import compile_filter

    fields = _packet(
        {
            "http.method": "GET",
            "http.uri": "/a",
            "more": [{"http.method": "POST", "http.uri": "/b"}, {"dns.queries": [["x.example", "A"]]}],
        }
    )
    assert fields["http"] == [{"method": "GET", "uri": "/a"}, {"method": "POST", "uri": "/b"}]
    assert fields["dns"]["queries"] == [{"name": "x.example", "type": "A"}]
    assert compile_filter('http.method == "POST" and http.uri == "/a"')(fields)
    assert not compile_filter('http.method != "POST"')(fields)
    assert "GET /a (+1 more)" in summary_line(fields, 0.0)
