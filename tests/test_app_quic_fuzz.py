"""No exception escapes QuicFlow.feed: mutated real Initials, before and inside the encryption."""

from __future__ import annotations

import random

import msgpack
from conftest import PCAPS
from test_app_tls_build import initial_packet
from test_app_tls_corpus import flows_of
from test_app_tls_fuzz import mutate

from services.decoder.app import quic, quic_crypto


def _client_initials() -> list[bytes]:
    _, udp_flows = flows_of(PCAPS / "ja4-quic" / "input.pcap")
    out = []
    for datagrams in udp_flows:
        out.extend(d for d, from_client in datagrams[:4] if from_client and quic.looks_like_quic(d))
    return out


def _plain(datagram: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(version, dcid, scid, decrypted payload) of the first packet of a client Initial datagram."""
    version = int.from_bytes(datagram[1:5], "big")
    dcid = datagram[6 : 6 + datagram[5]]
    p = 6 + len(dcid)
    scid = datagram[p + 1 : p + 1 + datagram[p]]
    p += 1 + len(scid)
    token_len, p = quic.read_varint(datagram, p)
    length, p = quic.read_varint(datagram, p + token_len)
    keys = quic_crypto.initial_keys(dcid, quic_crypto.VERSIONS[version])
    _, payload = quic_crypto.unprotect(datagram, p, p + length, keys)
    return version, dcid, scid, payload


def _feed_all(flow: quic.QuicFlow, datagrams) -> list[dict]:
    out = []
    for d, from_client in datagrams:
        fields = flow.feed(d, from_client)
        assert fields is None or isinstance(fields, dict)
        if fields:
            msgpack.packb(fields)
            out.append(fields)
    return out


def test_real_initials_decrypt():
    initials = _client_initials()
    assert len(initials) >= 10
    version, dcid, _, payload = _plain(initials[0])
    assert version == quic_crypto.QUIC_V1 and dcid and b"\x06" in payload


def test_mutated_datagrams_never_raise():
    initials = _client_initials()
    rng = random.Random(99)
    for _ in range(3000):
        datagram = mutate(rng, rng.choice(initials))
        _feed_all(quic.QuicFlow(), [(datagram, rng.random() < 0.8)])
    assert True  # reaching here without an exception is the point


def test_mutated_plaintext_reencrypted_never_raises():
    plains = [_plain(d) for d in _client_initials()[:6]]
    rng = random.Random(7)
    reached = 0
    for _ in range(1500):
        version, dcid, scid, payload = rng.choice(plains)
        mutated = mutate(rng, payload)
        packet = initial_packet(version, dcid, scid, rng.randrange(4), mutated)
        flow = quic.QuicFlow()
        _feed_all(flow, [(packet, True)])
        reached += flow.key_dcid is not None
    assert reached == 1500  # every packet got past the header parse into decryption and frames
