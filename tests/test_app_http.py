"""HTTP/1.x and cleartext HTTP/2 through AppInspector: split heads, persistent connections, h2c."""

from __future__ import annotations

import struct

import hpack

from services.decoder.app import AppInspector
from services.decoder.app.http2 import PREFACE
from services.decoder.app.http_text import authority_of, normalise_host

C, S = bytes([192, 168, 0, 2]), bytes([93, 184, 216, 34])
SYN, ACK, PSH_ACK, FIN_ACK = 0x02, 0x10, 0x18, 0x11


class Conn:
    """A TCP connection driven through one inspector; remembers sequence numbers."""

    def __init__(self, insp: AppInspector, sport: int = 40000, dport: int = 80) -> None:
        self.insp = insp
        self.sport, self.dport = sport, dport
        self.cseq, self.sseq = 1000, 50000
        self.ts = 1.0
        insp.inspect(self.ts, 6, C, S, sport, dport, SYN, self.cseq - 1, b"")
        insp.inspect(self.ts, 6, S, C, dport, sport, SYN | ACK, self.sseq - 1, b"")

    def client(self, data: bytes, flags: int = PSH_ACK):
        self.ts += 0.001
        out = self.insp.inspect(self.ts, 6, C, S, self.sport, self.dport, flags, self.cseq, data)
        self.cseq += len(data)
        return out

    def server(self, data: bytes, flags: int = PSH_ACK):
        self.ts += 0.001
        out = self.insp.inspect(self.ts, 6, S, C, self.dport, self.sport, flags, self.sseq, data)
        self.sseq += len(data)
        return out


def all_fields(results) -> list[dict]:
    out = []
    for r in results:
        if r:
            out.append({k: v for k, v in r.items() if k != "more"})
            out.extend(r.get("more", ()))
    return out


REQ = (
    b"GET /a?b=c HTTP/1.1\r\nHost: WWW.Example.COM:8080\r\nUser-Agent: test-agent/1.0\r\nAccept: */*\r\n\r\n"
)


def test_request_split_byte_by_byte_is_reported_on_the_completing_packet():
    conn = Conn(AppInspector())
    results = [conn.client(REQ[i : i + 1]) for i in range(len(REQ))]
    assert all(r is None for r in results[:-1])
    assert results[-1] == {
        "http.method": "GET",
        "http.uri": "/a?b=c",
        "http.version": "HTTP/1.1",
        "http.host": "www.example.com",
        "http.user_agent": "test-agent/1.0",
    }


def test_out_of_order_segments_of_a_head_are_reassembled():
    insp = AppInspector()
    conn = Conn(insp)
    first, second = REQ[:20], REQ[20:]
    late = insp.inspect(1.1, 6, C, S, conn.sport, conn.dport, PSH_ACK, conn.cseq + 20, second)
    assert late is None
    done = insp.inspect(1.2, 6, C, S, conn.sport, conn.dport, PSH_ACK, conn.cseq, first)
    assert done["http.uri"] == "/a?b=c"


def test_persistent_connection_bodies_skipped_by_length_and_chunks():
    conn = Conn(AppInspector())
    body = b"GET /not-a-request HTTP/1.1\r\nHost: evil\r\n\r\n"
    post = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nContent-Type: text/x\r\n\r\n" % len(body)
    results = [conn.client(post), conn.client(body[:10]), conn.client(body[10:])]
    results.append(conn.client(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"))
    resp1 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n"
    chunks = b"5\r\nHTTP/\r\n1a;ext=1\r\nHTTP/1.1 999 fake\r\n\r\nxxxxx\r\n0\r\nTrailer: x\r\n\r\n"
    resp2 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"
    results += [conn.server(resp1), conn.server(chunks[:7]), conn.server(chunks[7:] + resp2)]
    fields = all_fields(results)
    assert [f.get("http.uri") for f in fields if "http.method" in f] == ["/up", "/next"]
    assert [f["http.status"] for f in fields if "http.status" in f] == [200, 404]
    assert fields[0]["http.content_type"] == "text/x"


def test_pipelined_requests_in_one_segment_use_more():
    conn = Conn(AppInspector())
    out = conn.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n")
    assert out["http.uri"] == "/1" and out["more"][0]["http.uri"] == "/2"


def test_head_response_has_no_body_and_lenient_lines():
    conn = Conn(AppInspector())
    conn.client(b"\r\nHEAD /h HTTP/1.0\nHost:  x.test \n\n")
    assert conn.server(b"HTTP/1.0 200 OK\nContent-Length: 1000\n\n")["http.status"] == 200
    conn.client(b"GET /again HTTP/1.0\nHost: x.test\n\n")
    assert conn.server(b"HTTP/1.0 304 Not Modified\r\n\r\n")["http.status"] == 304


def test_http09_request_completed_when_the_client_closes():
    conn = Conn(AppInspector())
    assert conn.client(b"GET /") is None
    out = conn.client(b"", FIN_ACK)
    assert out["http.method"] == "GET" and out["http.uri"] == "/" and out["http.version"] == "HTTP/0.9"


def test_hosts_ipv6_absolute_uri_and_connect():
    assert normalise_host("[::1]:80") == "[::1]"
    assert normalise_host("Example.COM.:443") == "example.com"
    assert normalise_host("user@host:1") == "host"
    assert authority_of("http://h.test:8080/x?y") == "h.test:8080"
    assert authority_of("h.test:443") == "h.test:443"
    assert authority_of("/path") == ""
    conn = Conn(AppInspector())
    assert conn.client(b"GET http://Proxy.Test:3128/x HTTP/1.1\r\n\r\n")["http.host"] == "proxy.test"
    conn2 = Conn(AppInspector(), sport=40001)
    out = conn2.client(b"CONNECT secure.test:443 HTTP/1.1\r\n\r\n")
    assert out["http.method"] == "CONNECT" and out["http.host"] == "secure.test"
    conn2.server(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert conn2.insp.counters["http_connect_tunnels"] == 1


def test_resync_after_a_gap_finds_the_next_request():
    insp = AppInspector()
    conn = Conn(insp)
    assert conn.client(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")["http.uri"] == "/1"
    conn.cseq += 30  # a lost segment with the start of request 2
    assert conn.client(b"tail: of-lost\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n") is None
    out = conn.client(b"", FIN_ACK)  # the FIN skips the hole: resync finds request 3
    assert [f["http.uri"] for f in all_fields([out])] == ["/3"]
    assert insp.counters["reasm_gaps"] == 1 and insp.counters["http_gap_resyncs"] == 1


def test_a_gap_inside_a_body_of_known_length_keeps_framing():
    insp = AppInspector()
    conn = Conn(insp)
    conn.client(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    conn.cseq += 50  # 50 body bytes lost
    assert conn.client(b"b" * 40 + b"GET /next HTTP/1.1\r\n\r\n") is None
    out = conn.client(b"", FIN_ACK)
    assert out["http.uri"] == "/next"
    assert insp.counters["http_gap_resyncs"] == 0


def test_non_http_text_protocols_are_not_taken_for_http():
    conn = Conn(AppInspector(), dport=25)
    assert conn.server(b"220 mail.test ESMTP\r\n") is None
    assert conn.client(b"EHLO client.test\r\n") is None
    assert conn.insp.counters["flows_unidentified"] == 1


def h2_frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", sid) + payload


def test_h2_prior_knowledge_with_continuation_and_dynamic_table():
    enc_c, enc_s = hpack.Encoder(), hpack.Encoder()
    req1 = [(":method", "GET"), (":path", "/one"), (":scheme", "http"), (":authority", "H2.test:8080")]
    req1 += [("user-agent", "h2-agent")]
    block = enc_c.encode(req1)
    conn = Conn(AppInspector())
    assert conn.server(h2_frame(4, 0, 0, b"")) is None  # server SETTINGS first: identified later
    head = h2_frame(1, 0x0, 1, block[:5]) + h2_frame(9, 0x4, 1, block[5:])
    out = conn.client(PREFACE + h2_frame(4, 0, 0, b"") + head)
    assert out["http.method"] == "GET" and out["http.uri"] == "/one"
    assert out["http.host"] == "h2.test" and out["http.user_agent"] == "h2-agent"
    # second request reuses the dynamic table: needs the same decoder state
    block2 = enc_c.encode([(":method", "GET"), (":path", "/two"), (":authority", "H2.test:8080")])
    out2 = conn.client(h2_frame(0, 0, 1, b"x" * 50) + h2_frame(1, 0x5, 3, block2))
    assert out2["http.uri"] == "/two" and out2["http.host"] == "h2.test"
    resp = conn.server(h2_frame(1, 0x4, 1, enc_s.encode([(":status", "200")])))
    assert resp["http.status"] == 200


def test_h2c_upgrade_switches_both_directions():
    conn = Conn(AppInspector())
    req = b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
    assert conn.client(req)["http.uri"] == "/up"
    resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    enc_s, enc_c = hpack.Encoder(), hpack.Encoder()
    out = conn.server(resp + h2_frame(4, 0, 0, b"") + h2_frame(1, 0x4, 1, enc_s.encode([(":status", "204")])))
    assert out["http.status"] == 101 and out["more"][0]["http.status"] == 204
    block = enc_c.encode([(":method", "POST"), (":path", "/h2"), (":authority", "h")])
    out = conn.client(PREFACE + h2_frame(4, 0, 0, b"") + h2_frame(1, 0x4, 3, block))
    assert out["http.method"] == "POST" and out["http.version"] == "HTTP/2"
    assert conn.insp.counters["http_upgrades_h2c"] == 1


def test_hpack_garbage_is_counted():
    conn = Conn(AppInspector())
    out = conn.client(PREFACE + h2_frame(1, 0x4, 1, b"\xff\xff\xff\xff\xff\xff"))
    assert out is None
    assert conn.insp.counters["http2_hpack_errors"] == 1
