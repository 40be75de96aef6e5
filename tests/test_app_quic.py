"""QUIC: Initial key derivation, header/packet protection, CRYPTO reassembly and the ClientHello.

Test vectors are those of RFC 9001 Appendix A (QUIC v1) and RFC 9369 Appendix A (QUIC v2): the
same ClientHello (SNI "example.com", ALPN "alpn") sent by a client in its first Initial.
"""

from __future__ import annotations

import msgpack
import pytest
from test_app_tls_build import (
    FOXIO_CIPHERS,
    alpn_ext,
    client_hello,
    crypto_frame,
    initial_packet,
    sni_ext,
    standard_ext,
    varint,
)

from services.decoder.app import quic, quic_crypto
from services.decoder.app.quic_crypto import QUIC_V1, QUIC_V2

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2 / RFC 9369 A.2: the client's CRYPTO frame (a 241-byte ClientHello), padded
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)
V1_PLAIN_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
V2_PLAIN_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")

V1_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
V2_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)


# --- key derivation and protection against the RFC vectors ---------------------------------


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (QUIC_V1, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"),
        (QUIC_V2, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"),
    ],
)  # fmt: skip
def test_client_initial_secrets_match_rfc(version, key, iv, hp):
    got = quic_crypto.initial_secrets(RFC_DCID, quic_crypto.VERSIONS[version])
    assert got == (bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (QUIC_V1, "cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e", "c206b8d9b9f0f37644430b490eeaa314"),
        (QUIC_V2, "82db637861d55e1d011f19ea71d5d2a7", "dd13c276499c0249d3310652", "edf6d05c83121201b436e16877593c3a"),
    ],
)  # fmt: skip
def test_server_initial_secrets_match_rfc(version, key, iv, hp):
    got = quic_crypto.initial_secrets(RFC_DCID, quic_crypto.VERSIONS[version], client=False)
    assert got == (bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))


@pytest.mark.parametrize(
    ("version", "header", "packet"),
    [(QUIC_V1, V1_PLAIN_HEADER, V1_CLIENT_INITIAL), (QUIC_V2, V2_PLAIN_HEADER, V2_CLIENT_INITIAL)],
)
def test_protect_and_unprotect_reproduce_rfc_packet(version, header, packet):
    keys = quic_crypto.initial_keys(RFC_DCID, quic_crypto.VERSIONS[version])
    assert quic_crypto.protect(header, 4, RFC_CLIENT_PAYLOAD, keys) == packet
    pn, payload = quic_crypto.unprotect(packet, len(header) - 4, len(packet), keys)
    assert pn == 2
    assert payload == RFC_CLIENT_PAYLOAD


# --- QuicFlow on the RFC client Initials ---------------------------------------------------


@pytest.mark.parametrize(("version", "packet"), [(QUIC_V1, V1_CLIENT_INITIAL), (QUIC_V2, V2_CLIENT_INITIAL)])
def test_flow_reads_rfc_client_initial(version, packet):
    assert quic.looks_like_quic(packet)
    flow = quic.QuicFlow()
    fields = flow.feed(packet, True)
    assert fields["quic.version"] == version
    assert fields["quic.sni"] == "example.com"
    assert fields["quic.alpn"] == ["alpn"]
    assert fields["quic.ja4"].startswith("q13d0211an_")  # 2 ciphers, 11 extensions, ALPN "alpn"
    assert fields["quic.ja3"].startswith("771,4865-4866,")
    assert not any(key.startswith("tls.") for key in fields)
    assert flow.done
    assert flow.feed(packet, True) is None  # fields are given once
    msgpack.packb(fields)


def test_v1_and_v2_give_the_same_fingerprint():
    v1 = quic.QuicFlow().feed(V1_CLIENT_INITIAL, True)
    v2 = quic.QuicFlow().feed(V2_CLIENT_INITIAL, True)
    assert v1["quic.ja4"] == v2["quic.ja4"] and v1["quic.ja3_hash"] == v2["quic.ja3_hash"]


def test_server_datagrams_do_not_count_as_client_initials():
    flow = quic.QuicFlow()
    assert flow.feed(V1_CLIENT_INITIAL, False) is None
    assert not flow.done
    assert flow.feed(V1_CLIENT_INITIAL, True)["quic.sni"] == "example.com"


# --- CRYPTO reassembly across packets and datagrams (built with our own protection) --------


def _pq_hello() -> bytes:
    from test_app_tls_build import ext, vec16

    key_share = ext(0x0033, vec16(b"\x11\xec" + vec16(bytes(1216)) + b"\x00\x1d" + vec16(bytes(32))))
    extensions = [sni_ext(b"pq.example.net"), alpn_ext([b"h3"]), key_share, standard_ext(0x002B),
                  standard_ext(0x000D), standard_ext(0x000A), ext(0x0039, b"\x01\x04\x80\x00\x75\x30")]  # fmt: skip
    return client_hello(FOXIO_CIPHERS[:3], extensions)


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_client_hello_over_two_datagrams_out_of_order(version):
    hello = _pq_hello()
    assert len(hello) > 1400
    dcid, scid = bytes.fromhex("0011223344556677"), b"\x99" * 4
    cut = 700
    first = initial_packet(version, dcid, scid, 0, crypto_frame(cut, hello[cut:]), pad_to=1160)
    second = initial_packet(version, dcid, scid, 1, b"\x01" + crypto_frame(0, hello[:cut]), pad_to=1160)
    flow = quic.QuicFlow()
    assert flow.feed(first, True) is None
    assert not flow.done
    fields = flow.feed(second, True)
    assert fields["quic.version"] == version
    assert fields["quic.sni"] == "pq.example.net"
    assert fields["quic.alpn"] == ["h3"]
    assert fields["quic.ja4"].startswith("q13d0307h3_")


def test_scattered_crypto_frames_with_ping_and_padding_in_one_packet():
    hello = _pq_hello()
    pieces = [(900, hello[900:]), (0, hello[:300]), (300, hello[300:900])]
    frames = b""
    for offset, data in pieces:
        frames += b"\x01\x00\x00" + crypto_frame(offset, data)
    # an ACK frame and overlapping duplicate data must be harmless
    frames = b"\x02" + varint(0) + varint(0) + varint(1) + varint(0) + varint(0) + varint(0) + frames
    frames += crypto_frame(100, hello[100:200])
    packet = initial_packet(QUIC_V2, b"\x01\x02\x03\x04\x05\x06\x07\x08", b"", 0, frames)
    fields = quic.QuicFlow().feed(packet, True)
    assert fields["quic.sni"] == "pq.example.net"


def test_coalesced_initials_in_one_datagram_then_a_handshake_packet():
    hello = _pq_hello()
    dcid = b"\xaa" * 8
    a = initial_packet(QUIC_V1, dcid, b"", 0, crypto_frame(0, hello[:800]))
    b = initial_packet(QUIC_V1, dcid, b"", 1, crypto_frame(800, hello[800:]))
    handshake = bytes((0xE0,)) + b"\x00\x00\x00\x01" + b"\x08" + dcid + b"\x00" + varint(20) + bytes(20)
    fields = quic.QuicFlow().feed(a + b + handshake, True)
    assert fields["quic.sni"] == "pq.example.net"


def test_client_initials_after_retry_use_the_new_connection_id():
    hello = _pq_hello()
    first_dcid, retry_scid = b"\x01" * 8, b"\x02" * 8
    flow = quic.QuicFlow()
    assert flow.feed(initial_packet(QUIC_V1, first_dcid, b"", 0, crypto_frame(0, hello[:500])), True) is None
    retry = bytes((0xF0,)) + b"\x00\x00\x00\x01" + b"\x00" + b"\x08" + retry_scid + b"token" + bytes(16)
    assert flow.feed(retry, False) is None
    again = initial_packet(QUIC_V1, retry_scid, b"", 1, crypto_frame(0, hello))
    assert flow.feed(again, True)["quic.sni"] == "pq.example.net"


def test_looks_like_quic():
    assert quic.looks_like_quic(V1_CLIENT_INITIAL)
    assert quic.looks_like_quic(V2_CLIENT_INITIAL)
    assert not quic.looks_like_quic(b"\x12\x34\x01\x00\x00\x01" + bytes(20))  # DNS query
    assert not quic.looks_like_quic(b"\x40" + bytes(30))  # short header
    assert not quic.looks_like_quic(b"\xc0\x0a\x0a\x0a\x0a" + bytes(30))  # unknown version
    assert not quic.looks_like_quic(b"\xc0\x00\x00")


# --- bounds and bad input ------------------------------------------------------------------


def test_crypto_offset_beyond_bound_is_ignored():
    before = quic.counters["quic_crypto_bound"]
    packet = initial_packet(QUIC_V1, b"\x05" * 8, b"", 0, crypto_frame(70000, b"x" * 10))
    flow = quic.QuicFlow()
    assert flow.feed(packet, True) is None
    assert quic.counters["quic_crypto_bound"] == before + 1
    assert flow.held == 0


def test_undecryptable_initials_give_up_after_a_few():
    flow = quic.QuicFlow()
    damaged = bytearray(V1_CLIENT_INITIAL)
    damaged[-1] ^= 1
    for _ in range(quic.MAX_FAILURES):
        assert flow.feed(bytes(damaged), True) is None
    assert flow.done
    assert flow.feed(V1_CLIENT_INITIAL, True) is None


def test_non_client_hello_crypto_stream_gives_up():
    packet = initial_packet(QUIC_V1, b"\x06" * 8, b"", 0, crypto_frame(0, b"\x02\x00\x00\x10" + bytes(16)))
    flow = quic.QuicFlow()
    assert flow.feed(packet, True) is None and flow.done


def test_version_negotiation_from_server_ends_the_flow():
    flow = quic.QuicFlow()
    vn = b"\x80\x00\x00\x00\x00\x08" + b"\x01" * 8 + b"\x00" + b"\x00\x00\x00\x01"
    assert flow.feed(vn, False) is None and flow.done
