"""AppInspector dispatch: done flows, bounds and eviction, expiry, and a fuzz run over inspect()."""

from __future__ import annotations

import random
import struct

import hpack

from services.decoder.app import AppInspector
from services.decoder.app.http2 import PREFACE

C, S = bytes([10, 1, 1, 1]), bytes([10, 2, 2, 2])


def test_uninteresting_flows_are_remembered_as_done():
    insp = AppInspector()
    assert insp.inspect(1.0, 6, C, S, 5000, 22, 0x02, 1, b"") is None
    assert insp.inspect(1.0, 6, S, C, 22, 5000, 0x12, 9, b"") is None
    assert insp.inspect(1.1, 6, S, C, 22, 5000, 0x18, 10, b"SSH-2.0-OpenSSH_9.6\r\n") is None
    assert insp.inspect(1.2, 6, C, S, 5000, 22, 0x18, 2, b"SSH-2.0-client\r\n") is None
    assert insp.counters["flows_unidentified"] == 1 and insp.active_flows == 0
    # both directions now hit the done entry (one dict lookup)
    key = (C, S, 5000, 22, 6)
    assert insp._table[key] is None and insp._table[(S, C, 22, 5000, 6)] is None
    # UDP that is neither DNS nor QUIC: done at the first datagram
    assert insp.inspect(2.0, 17, C, S, 4000, 9999, 0, 0, b"hello") is None
    assert insp._table[(S, C, 9999, 4000, 17)] is None


def test_flow_table_bound_evicts_oldest_and_counts():
    insp = AppInspector(max_flows=10)
    for port in range(30):
        insp.inspect(float(port), 6, C, S, 10000 + port, 80, 0x02, 1, b"")
    assert insp.active_flows == 10
    assert insp.counters["flows_evicted"] == 20
    # the evicted ones are remembered as done, the newest still decode
    assert insp.inspect(31.0, 6, C, S, 10000, 80, 0x18, 2, b"GET / HTTP/1.0\r\n\r\n") is None
    out = insp.inspect(31.0, 6, C, S, 10029, 80, 0x18, 2, b"GET /n HTTP/1.0\r\n\r\n")
    assert out["http.uri"] == "/n"


def test_done_table_is_bounded():
    insp = AppInspector(max_flows=4, max_done=100)
    for port in range(1000):
        insp.inspect(1.0, 17, C, S, 20000 + port, 7, 0, 0, b"x")
    assert len(insp._table) <= 100 + 2 * 4 + 2
    assert insp.counters["done_forgotten"] > 0


def test_expire_drops_idle_flows_and_releases_held_bytes():
    insp = AppInspector(idle_timeout=10.0, sweep_interval=1.0)
    insp.inspect(1.0, 6, C, S, 1234, 80, 0x02, 100, b"")
    insp.inspect(1.0, 6, C, S, 1234, 80, 0x18, 500, b"held out of order")
    assert insp.pool.total > 0 and insp.active_flows == 1
    insp.expire(5.0)
    assert insp.active_flows == 1
    insp.expire(20.0)
    assert insp.active_flows == 0 and insp.pool.total == 0
    assert insp.counters["flows_expired"] == 1


def test_handshake_bound_on_a_tls_flow_that_never_completes():
    insp = AppInspector(handshake_bytes=1024)
    insp.inspect(1.0, 6, C, S, 5555, 443, 0x02, 0, b"")
    seq = 1
    record = b"\x16\x03\x01\x40\x00" + b"\x01" + b"\x00" * 200  # a record announcing 16 KiB
    for _ in range(20):
        insp.inspect(1.0, 6, C, S, 5555, 443, 0x18, seq, record)
        seq += len(record)
    assert insp.counters["flows_tls"] == 1
    assert insp.pool.total == 0


def _seeds() -> list[tuple[int, int, bytes]]:
    """(proto, dport, payload) examples of each protocol the inspector decodes."""
    dns = (
        struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
        + b"\x07example\x03com\x00\x00\x01\x00\x01"
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    )
    http = b"GET /x HTTP/1.1\r\nHost: a.test\r\nUser-Agent: u\r\nContent-Length: 3\r\n\r\nabc"
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/"), (":authority", "h")])
    h2 = PREFACE + struct.pack("!I", len(block))[1:] + b"\x01\x04\x00\x00\x00\x01" + block
    tls = b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + bytes(40)
    return [
        (17, 53, dns),
        (6, 53, struct.pack("!H", len(dns)) + dns),
        (6, 80, http),
        (6, 80, resp),
        (6, 80, h2),
        (6, 443, tls),
        (17, 443, b"\xc3\x00\x00\x00\x01" + bytes(60)),
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.6 and b:
            del b[rng.randrange(len(b)) :]
        elif op < 0.8:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.choice([b"\r\n", b"\n\n", b"\xc0\x0c", b"\xff\xff", b"0\r\n\r\n", b"HTTP/1.1 "])
    return bytes(b)


def test_fuzz_mutated_payloads_never_raise():
    rng = random.Random(20261127)
    seeds = _seeds()
    insp = AppInspector(max_flows=64, handshake_bytes=2048)
    results = 0
    for i in range(6000):
        proto, dport, seed = rng.choice(seeds)
        sport = 30000 + (i % 97)
        data = _mutate(rng, seed)
        flags = rng.choice([0x18, 0x18, 0x18, 0x10, 0x02, 0x11, 0x04, 0x12]) if proto == 6 else 0
        seq = rng.choice([1, 1 + len(seed), rng.randrange(1 << 32), 0xFFFFFFF0])
        src, dst, sp, dp = (C, S, sport, dport) if rng.random() < 0.7 else (S, C, dport, sport)
        out = insp.inspect(i * 0.01, proto, src, dst, sp, dp, flags, seq, data)
        if out is not None:
            assert isinstance(out, dict)
            results += 1
        if i % 256 == 0:
            insp.expire(i * 0.01)
    assert results > 100  # the mutations still leave many decodable messages
    assert insp.counters["app_exceptions"] == 0, insp.counters
    assert insp.active_flows <= 64


def test_port_reuse_after_a_finished_flow_starts_a_new_one():
    insp = AppInspector()
    insp.inspect(1.0, 6, C, S, 4444, 80, 0x02, 10, b"")
    assert insp.inspect(1.1, 6, C, S, 4444, 80, 0x18, 11, b"GET /1 HTTP/1.0\r\n\r\n")["http.uri"] == "/1"
    insp.inspect(1.2, 6, C, S, 4444, 80, 0x11, 30, b"")
    insp.inspect(1.2, 6, S, C, 80, 4444, 0x11, 99, b"")
    assert insp.inspect(1.3, 6, C, S, 4444, 80, 0x18, 31, b"GET /x HTTP/1.0\r\n\r\n") is None
    insp.inspect(2.0, 6, C, S, 4444, 80, 0x02, 5000, b"")
    assert insp.inspect(2.1, 6, C, S, 4444, 80, 0x18, 5001, b"GET /2 HTTP/1.0\r\n\r\n")["http.uri"] == "/2"


def test_flows_without_data_expire_early():
    insp = AppInspector(quiet_timeout=5.0, sweep_interval=1.0)
    for port in range(100):
        insp.inspect(1.0, 6, C, S, 2000 + port, 80, 0x02, 1, b"")
        insp.inspect(1.0, 6, S, C, 80, 2000 + port, 0x14, 0, b"")  # refused
    insp.inspect(1.0, 6, C, S, 3000, 80, 0x02, 1, b"")
    insp.inspect(1.0, 6, C, S, 3000, 80, 0x18, 2, b"GET / HTTP/1.1\r\n")
    insp.expire(7.0)
    assert insp.active_flows == 1 and insp.counters["flows_expired"] == 100


def test_syn_reusing_a_live_5_tuple_restarts_the_flow():
    insp = AppInspector()
    insp.inspect(1.0, 6, C, S, 4445, 80, 0x02, 10, b"")
    insp.inspect(1.1, 6, C, S, 4445, 80, 0x18, 11, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    insp.inspect(1.2, 6, C, S, 4445, 80, 0x04, 40, b"")  # client RST; server never closes
    insp.inspect(2.0, 6, C, S, 4445, 80, 0x02, 900000, b"")
    out = insp.inspect(2.1, 6, C, S, 4445, 80, 0x18, 900001, b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out["http.uri"] == "/2" and insp.counters["flows_restarted"] == 1


def test_parser_buffers_across_flows_are_bounded_at_each_sweep():
    insp = AppInspector(max_buffered=50_000, sweep_interval=1.0)
    head = b"GET /" + b"a" * 9000  # an endless request line: 9 KB buffered per flow
    for port in range(20):
        insp.inspect(1.0, 6, C, S, 6000 + port, 80, 0x02, 1, b"")
        insp.inspect(1.0, 6, C, S, 6000 + port, 80, 0x18, 2, head)
    insp.expire(2.0)
    assert insp.buffered <= 50_000
    assert insp.counters["flows_dropped_buffer_bound"] == 15
    assert insp.active_flows == 5


def _client_hello(server_name: str) -> bytes:
    """A real ClientHello from Python's TLS stack (memory BIOs, nothing sent anywhere)."""
    import contextlib
    import ssl

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for a ServerHello
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_split_out_of_order_reaches_the_tls_parser():
    hello = _client_hello("split.example")
    insp = AppInspector()
    insp.inspect(1.0, 6, C, S, 7000, 8443, 0x02, 99, b"")  # TLS on a non-TLS port: by content
    a, b, c = hello[:100], hello[100:200], hello[200:]
    assert insp.inspect(1.1, 6, C, S, 7000, 8443, 0x18, 300, c) is None
    assert insp.inspect(1.2, 6, C, S, 7000, 8443, 0x18, 100, a) is None
    out = insp.inspect(1.3, 6, C, S, 7000, 8443, 0x18, 200, b)
    assert out["tls.sni"] == "split.example"
    assert insp.counters["flows_tls"] == 1
    # the client side is done: its later bytes cost one lookup and a finished-consumer check
    assert insp.inspect(1.4, 6, C, S, 7000, 8443, 0x18, 100 + len(hello), b"\x17\x03\x03\x00\x01x") is None
