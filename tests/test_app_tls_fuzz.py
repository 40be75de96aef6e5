"""No exception escapes the TLS parsers: byte mutations of real hellos, and random bytes."""

from __future__ import annotations

import random

import msgpack
from conftest import PCAPS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_app_tls_build import foxio_hello, records
from test_app_tls_corpus import flows_of

from services.decoder.app import tls

SEED_PCAPS = (
    "ja4-tls-quic/input.pcap",
    "tls/tls-certs-alert/input.pcap",
    "tls/tls13-draft19/tls13_draft19.pcap",
    "bug-5713-01/TLSv1-Extracted-MaliciousC2.pcap",
    "bug-2646-02/input.pcap",
)


def _seeds() -> tuple[list[bytes], list[bytes]]:
    clients, servers = [records(foxio_hello())], []
    for name in SEED_PCAPS:
        conns, _ = flows_of(PCAPS / name)
        for conn in conns:
            for from_client, out in ((True, clients), (False, servers)):
                data = b"".join(conn.stream_pieces(from_client))[:8000]
                if data[:1] == b"\x16":
                    out.append(data)
    return clients, servers


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(buf)) if buf else 0
        if op < 0.45 and buf:
            buf[pos] = rng.randrange(256)
        elif op < 0.6 and buf:
            buf[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80))
        elif op < 0.75:
            del buf[pos : pos + rng.randint(1, 40)]
        elif op < 0.9:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 40))
        else:
            del buf[rng.randint(0, len(buf)) :]
    return bytes(buf)


def _check(result) -> None:
    fields, status = result
    assert status in ("done", "more", "no")
    assert isinstance(fields, dict)
    msgpack.packb(fields)
    if status != "done":
        assert fields == {}


def test_seeds_come_from_real_captures():
    clients, servers = _seeds()
    assert len(clients) >= 5 and len(servers) >= 4
    assert all(tls.parse_client(c)[1] == "done" for c in clients)
    assert all(tls.parse_server(s)[1] == "done" for s in servers)


def test_mutated_client_and_server_hellos_never_raise():
    clients, servers = _seeds()
    rng = random.Random(1234)
    statuses = {"done": 0, "more": 0, "no": 0}
    for i in range(6000):
        pool, parse = (clients, tls.parse_client) if i % 2 else (servers, tls.parse_server)
        data = mutate(rng, rng.choice(pool))
        result = parse(data)
        _check(result)
        statuses[result[1]] += 1
        # the dispatcher's way: growing prefixes
        cut = rng.randint(0, len(data))
        _check(parse(data[:cut]))
    assert all(count > 100 for count in statuses.values()), statuses


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_after_a_handshake_record_header(tail):
    for head in (b"\x16\x03\x01", b"\x16\x03\x03\x00\x80\x01", b"\x16\x03\x03\x00\x80\x02"):
        _check(tls.parse_client(head + tail))
        _check(tls.parse_server(head + tail))
