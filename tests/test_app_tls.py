"""TLS ClientHello / ServerHello / Certificate parsing and the JA3, JA3S and JA4 fingerprints."""

from __future__ import annotations

import datetime

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_app_tls_build import (
    FOXIO_CIPHERS,
    FOXIO_EXTENSIONS,
    FOXIO_JA4,
    FOXIO_SIG_ALGS,
    alpn_ext,
    certificate_message,
    client_hello,
    ext,
    foxio_hello,
    records,
    server_hello,
    sni_ext,
    standard_ext,
    vec8,
    vec16,
)

from services.decoder.app import fingerprints, tls
from services.decoder.app.fingerprints import ja3, ja3s, ja4

# --- fingerprints over plain values ------------------------------------------------------------


def test_grease_values_are_the_sixteen_of_rfc8701():
    assert len(fingerprints.GREASE) == 16
    assert all(fingerprints.is_grease(v) for v in (0x0A0A, 0x1A1A, 0x7A7A, 0xFAFA))
    assert not any(fingerprints.is_grease(v) for v in (0x0A1A, 0xBADA, 0x0000, 0x1301, 0xAAAB))


def test_ja3_leaves_grease_out_of_every_list_but_keeps_order():
    text = ja3(771, [0x0A0A, 4865, 0x2A2A, 49195], [0x1A1A, 0, 23, 0xFAFA], [0x3A3A, 29, 23], [0])
    assert text == "771,4865-49195,0-23,29-23,0"


def test_ja3_of_empty_lists_keeps_the_commas():
    assert ja3(769, [47], [], [], []) == "769,47,,,"


def test_ja3s():
    text = ja3s(771, 49199, [65281, 0, 0x0A0A, 11, 16, 23])
    assert text == "771,49199,65281-0-11-16-23"
    assert fingerprints.md5_hex(text) == "5d79edf64e03689ff559a54e9d9487bc"  # reference IDS value


def _foxio_ja4(**over):
    args = dict(
        quic=False,
        legacy_version=0x0303,
        supported_versions=[0x0304, 0x0303],
        has_sni=True,
        ciphers=FOXIO_CIPHERS,
        extensions=FOXIO_EXTENSIONS,
        alpn=b"h2",
        sig_algs=FOXIO_SIG_ALGS,
    )
    args.update(over)
    return ja4(**args)


@pytest.mark.parametrize("style", ["foxio", "suricata"])
def test_ja4_foxio_spec_example(style):
    assert _foxio_ja4(style=style) == FOXIO_JA4


def test_ja4_ignores_grease_in_counts_versions_and_hashes():
    greasy = _foxio_ja4(
        supported_versions=[0x6A6A, 0x0304, 0x0303],
        ciphers=[0x0A0A, *FOXIO_CIPHERS],
        extensions=[0x1A1A, *FOXIO_EXTENSIONS, 0xDADA],
        sig_algs=[0x2A2A, *FOXIO_SIG_ALGS],
    )
    assert greasy == FOXIO_JA4


def test_ja4_without_signature_algorithms_by_style():
    # FoxIO: "0005,...,ff01" hashed without a trailing underscore = 6d807ffa2a79 (spec example)
    assert _foxio_ja4(sig_algs=[], style="foxio").endswith("_6d807ffa2a79")
    # Suricata (the corpus reference) always adds the underscore
    assert not _foxio_ja4(sig_algs=[], style="suricata").endswith("_6d807ffa2a79")


def test_ja4_empty_lists_by_style():
    empty = dict(ciphers=[], extensions=[], sig_algs=[], alpn=None, has_sni=False)
    assert _foxio_ja4(**empty, style="foxio") == "t13i000000_000000000000_000000000000"
    # Suricata's own unit test: the empty JA4 hashes "" and "_"
    got = _foxio_ja4(**empty, supported_versions=None, legacy_version=0, style="suricata")
    assert got == "t00i000000_e3b0c44298fc_d2e2adf7177b"


def test_ja4_matches_suricata_unit_test_vector():
    got = ja4(
        quic=True,
        legacy_version=0x0303,
        supported_versions=None,
        has_sni=True,
        ciphers=[0x1111, 0x0A20, 0xBADA],
        extensions=[0x0A0A, 0x0000, 0x0010, 0xFACE, 0x0121, 0x1234],
        alpn=b"h3-16",
        sig_algs=[0x6666],
        style="suricata",
    )
    assert got == "q12d0305h6_f500716053f9_2debc8880bae"


@pytest.mark.parametrize(
    ("alpn", "chars"),
    [
        (None, "00"),
        (b"", "00"),
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h", "hh"),
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_ja4_alpn_characters_per_spec(alpn, chars):
    assert _foxio_ja4(alpn=alpn)[8:10] == chars


@pytest.mark.parametrize(
    ("versions", "legacy", "code"),
    [
        (None, 0x0301, "10"),
        (None, 0x0300, "s3"),
        (None, 0x0302, "11"),
        ([0x0303], 0x0303, "12"),
        ([0x7A7A, 0x0303, 0x0304], 0x0303, "13"),
        ([0x7F17], 0x0303, "00"),  # a TLS 1.3 draft number is not a known version
    ],
)
def test_ja4_version(versions, legacy, code):
    assert _foxio_ja4(supported_versions=versions, legacy_version=legacy)[1:3] == code


def test_ja4_counts_cap_at_99():
    got = _foxio_ja4(ciphers=list(range(1, 200)), extensions=list(range(1, 200)))
    assert got[3:8] == "d9999"


def test_first_alpn_skips_grease():
    assert fingerprints.first_alpn([b"\x0a\x0a", b"h3"]) == b"h3"
    assert fingerprints.first_alpn([]) is None


# --- ClientHello -------------------------------------------------------------------------------


def test_client_hello_fields_and_grease_left_out():
    fields, status = tls.parse_client(records(foxio_hello(grease=True)))
    assert status == "done"
    assert fields["tls.sni"] == "example.com"
    assert fields["tls.alpn"] == ["h2", "http/1.1"]
    assert fields["tls.version"] == 0x0303
    assert fields["tls.supported_versions"] == [0x4A4A, 0x0304, 0x0303]  # as on the wire
    assert fields["tls.cipher_suites"][0] == 0x1A1A
    assert fields["tls.sig_algs"] == [0x3A3A, *FOXIO_SIG_ALGS]
    assert fields["tls.supported_groups"] == [0x5A5A, 0x001D, 0x0017]
    assert fields["tls.ec_point_formats"] == [0]
    assert fields["tls.ja4"] == FOXIO_JA4
    plain, _ = tls.parse_client(records(foxio_hello(grease=False)))
    assert fields["tls.ja3"] == plain["tls.ja3"]
    assert fields["tls.ja3_hash"] == plain["tls.ja3_hash"] == fingerprints.md5_hex(plain["tls.ja3"])
    assert "2570" not in fields["tls.ja3"]  # 0x0a0a
    msgpack.packb(fields)  # plain values only


def test_client_hello_split_across_two_records():
    message = foxio_hello()
    whole, _ = tls.parse_client(records(message))
    for cut in (1, 3, 4, 50, len(message) - 1):
        split = records(message, [cut])
        assert split.count(b"\x16\x03\x01") >= 2
        fields, status = tls.parse_client(split)
        assert status == "done", cut
        assert fields == whole


def test_client_hello_across_tcp_segments_more_then_done():
    message = foxio_hello()
    stream = records(message, [300, 200])
    whole, _ = tls.parse_client(records(message))
    statuses = []
    for end in range(1, len(stream) + 1):  # every segment boundary, inside headers too
        fields, status = tls.parse_client(stream[:end])
        statuses.append(status)
        if end < len(stream):
            assert status == "more", end
            assert fields == {}
    assert statuses[-1] == "done"
    assert fields == whole


def test_large_post_quantum_client_hello_spans_segments():
    key_share = ext(0x0033, vec16(b"\x11\xec" + vec16(bytes(1216)) + b"\x00\x1d" + vec16(bytes(32))))
    exts = [sni_ext(b"pq.example"), key_share, standard_ext(0x002B), standard_ext(0x000D)]
    stream = records(client_hello(FOXIO_CIPHERS, exts))
    assert len(stream) > 1300
    assert tls.parse_client(stream[:1000])[1] == "more"
    fields, status = tls.parse_client(stream)
    assert status == "done" and fields["tls.sni"] == "pq.example"


def test_client_hello_without_extensions_tls10():
    fields, status = tls.parse_client(records(client_hello([0x002F, 0x0035], None, version=0x0301)))
    assert status == "done"
    assert fields["tls.ja3"] == "769,47-53,,,"
    assert fields["tls.ja4"].startswith("t10i020000_")
    assert "tls.sni" not in fields


def test_sni_control_characters_are_escaped():
    hello = client_hello([0x1301], [sni_ext(b"evil\x1b[31m.com\x00")])
    fields, status = tls.parse_client(records(hello))
    assert status == "done"
    assert fields["tls.sni"] == "evil\\x1b[31m.com\\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data
        b"\x16\x02\x00",  # not version 3
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\xff\xff",  # oversized record
        b"\x16\x03\x01\x00\x30\x02",  # ServerHello where a ClientHello should be
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_not_tls_is_no(data):
    assert tls.parse_client(data) == ({}, "no")


def test_non_tls_rejected_from_first_bytes():
    junk = b"\x00" * (1 << 20)
    assert tls.parse_client(junk)[1] == "no"
    assert tls.parse_client(b"\x00" * 5 + b"\x16\x03\x01" * 1000)[1] == "no"  # a record header first


def test_truncated_hello_inside_complete_record_is_no():
    message = foxio_hello()
    bad = message[:4] + message[4:60]  # header promises more than the record holds
    assert tls.parse_client(records(bad) + b"\x17\x03\x03\x00\x05hello") == ({}, "no")


def test_malformed_extension_is_no_and_counted():
    before = tls.counters["tls_client_hello_malformed"]
    hello = client_hello([0x1301], [ext(0x0000, b"\x00\x05\x00\x00\x09ab")])  # name overruns
    assert tls.parse_client(records(hello)) == ({}, "no")
    assert tls.counters["tls_client_hello_malformed"] == before + 1


# --- ServerHello and Certificate ---------------------------------------------------------------


def _self_signed(cn: str, sans: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "US"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_tls12_server_hello_and_certificate_across_segments():
    leaf = _self_signed("www.example.org", ["www.example.org", "example.org"])
    sh = server_hello(
        49199, [ext(0xFF01, b"\x00"), ext(0x0000, b""), ext(0x000B, b"\x01\x00"), alpn_ext([b"h2"])]
    )
    stream = records(sh) + records(certificate_message([leaf, leaf]), [700])
    for end in (3, 60, len(records(sh)) + 20, len(records(sh)) + 100):
        assert tls.parse_server(stream[:end])[1] == "more", end
    fields, status = tls.parse_server(stream)
    assert status == "done"
    assert fields["tls.ja3s"] == "771,49199,65281-0-11-16"
    assert fields["tls.negotiated_version"] == 0x0303
    assert fields["tls.alpn_selected"] == "h2"
    assert fields["tls.cert.subject"] == "C=US, CN=www.example.org"
    assert fields["tls.cert.issuer"] == "C=US, CN=www.example.org"
    assert fields["tls.cert.san"] == ["www.example.org", "example.org"]
    msgpack.packb(fields)


def test_leaf_certificate_read_before_the_whole_chain_arrives():
    leaf = _self_signed("leaf.example", ["leaf.example"])
    big_chain = certificate_message([leaf, bytes(9000)])
    stream = records(server_hello(0x1301, [])) + records(big_chain)
    fields, status = tls.parse_server(stream[: len(stream) - 8000])
    assert status == "done" and fields["tls.cert.san"] == ["leaf.example"]


def test_tls13_server_hello_is_done_at_once():
    sh = server_hello(0x1301, [ext(0x002B, b"\x03\x04"), ext(0x0033, b"\x00\x1d\x00\x20" + bytes(32))])
    stream = records(sh) + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x20" + bytes(32)
    fields, status = tls.parse_server(records(sh))
    assert status == "done"
    assert fields["tls.negotiated_version"] == 0x0304
    assert fields["tls.ja3s"] == "771,4865,43-51"
    assert tls.parse_server(stream) == (fields, "done")


def test_resumed_tls12_server_is_done_at_change_cipher_spec():
    stream = records(server_hello(0xC02F, [])) + b"\x14\x03\x03\x00\x01\x01"
    fields, status = tls.parse_server(stream)
    assert status == "done" and "tls.cert.subject" not in fields
    assert fields["tls.ja3s"] == "771,49199,"


def test_bad_certificate_is_counted_and_ignored():
    before = tls.counters["tls_cert_unparsed"]
    stream = records(server_hello(0xC02F, [])) + records(certificate_message([b"\x30\x03\x02\x01\x00"]))
    fields, status = tls.parse_server(stream)
    assert status == "done" and "tls.ja3s" in fields and "tls.cert.subject" not in fields
    assert tls.counters["tls_cert_unparsed"] == before + 1


def test_server_settles_for_server_hello_when_too_much_is_pending():
    chain = certificate_message([bytes(30000)])
    stream = records(server_hello(0xC02F, [])) + records(chain, [16000])
    fields, status = tls.parse_server(stream[: tls.SERVER_MAX_BYTES + 10])
    assert status == "done" and fields["tls.ja3s"] == "771,49199,"


def test_server_stream_not_starting_with_server_hello_is_no():
    assert tls.parse_server(records(foxio_hello()))[1] == "no"
    assert tls.parse_server(b"HTTP/1.1 200 OK\r\n")[1] == "no"


def test_draft_server_hello_without_session_id():
    body = b"\x7f\x12" + bytes(32) + b"\x13\x01" + vec16(ext(0x0028, b"\x00\x1d" + vec16(bytes(32))))
    sh = b"\x02" + len(body).to_bytes(3, "big") + body
    fields, status = tls.parse_server(records(sh))
    assert status == "done" and fields["tls.ja3s"] == "32530,4865,40"


def test_vec_helpers_roundtrip():
    assert vec8(b"ab") == b"\x02ab" and vec16(b"ab") == b"\x00\x02ab"


def test_certificate_read_once_then_from_the_cache():
    der = _self_signed("cached.example", ["cached.example", "www.cached.example"])
    tls._CERT_CACHE.pop(der, None)
    first = tls.certificate_fields(der)
    assert der in tls._CERT_CACHE
    again = tls.certificate_fields(der)
    assert again == first and first["tls.cert.san"] == ["cached.example", "www.cached.example"]
    again["tls.cert.san"].append("changed")  # a caller's copy: the cache and other flows keep theirs
    assert tls.certificate_fields(der) == first


def test_unparsed_certificate_is_not_cached_and_counted_every_time():
    bad = b"\x30\x03\x02\x01\x01"
    before = tls.counters["tls_cert_unparsed"]
    assert tls.certificate_fields(bad) == {} and tls.certificate_fields(bad) == {}
    assert tls.counters["tls_cert_unparsed"] == before + 2 and bad not in tls._CERT_CACHE
