"""Builders of TLS hellos and QUIC Initial packets for the TLS/QUIC parser tests.

Hand-built messages let a test say exactly what is on the wire (GREASE values, splits across
records and segments, QUIC v2 packets) where no capture has it. The builders are checked
against the real captures' values in the tests that use them.
"""

from __future__ import annotations

import struct

from services.decoder.app import quic_crypto

# FoxIO's JA4 example client (technical_details/JA4.md): its JA4 is t13d1516h2_8daaf6152771_e5627efa2ab1
FOXIO_CIPHERS = [
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
    0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
]  # fmt: skip
FOXIO_EXTENSIONS = [
    0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D,
    0x0005, 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015,
]  # fmt: skip
FOXIO_SIG_ALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
FOXIO_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"


def u16s(values: list[int]) -> bytes:
    return struct.pack(f"!{len(values)}H", *values)


def vec8(body: bytes) -> bytes:
    return bytes((len(body),)) + body


def vec16(body: bytes) -> bytes:
    return struct.pack("!H", len(body)) + body


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def sni_ext(name: bytes) -> bytes:
    return ext(0x0000, vec16(b"\x00" + vec16(name)))


def alpn_ext(values: list[bytes]) -> bytes:
    return ext(0x0010, vec16(b"".join(vec8(v) for v in values)))


def standard_ext(etype: int, *, sni: bytes = b"example.com", groups=(0x001D, 0x0017), sig_algs=FOXIO_SIG_ALGS,
                 versions=(0x0304, 0x0303), alpn=(b"h2", b"http/1.1")) -> bytes:  # fmt: skip
    """A plausible body for extension ``etype`` (empty for the ones whose body does not matter)."""
    if etype == 0x0000:
        return sni_ext(sni)
    if etype == 0x0010:
        return alpn_ext(list(alpn))
    if etype == 0x000A:
        return ext(etype, vec16(u16s(list(groups))))
    if etype == 0x000B:
        return ext(etype, vec8(b"\x00"))
    if etype == 0x000D:
        return ext(etype, vec16(u16s(list(sig_algs))))
    if etype == 0x002B:
        return ext(etype, vec8(u16s(list(versions))))
    if etype == 0x0033:
        return ext(etype, vec16(struct.pack("!HH", 0x001D, 32) + bytes(32)))
    return ext(etype, b"\x00" if etype & 0x0F0F == 0x0A0A else b"")


def client_hello(ciphers: list[int], extensions: list[bytes] | None, version: int = 0x0303,
                 session_id: bytes = bytes(32)) -> bytes:  # fmt: skip
    """A ClientHello handshake message (4-byte header included); None: no extensions block."""
    body = struct.pack("!H", version) + bytes(range(32)) + vec8(session_id) + vec16(u16s(ciphers))
    body += vec8(b"\x00")
    if extensions is not None:
        body += vec16(b"".join(extensions))
    return bytes((1,)) + len(body).to_bytes(3, "big") + body


def foxio_hello(grease: bool = True) -> bytes:
    """FoxIO's example client, with GREASE values sprinkled in (JA3/JA4 must not change)."""
    ciphers = ([0x1A1A] if grease else []) + FOXIO_CIPHERS
    extensions = [ext(0x2A2A, b"")] if grease else []
    for etype in FOXIO_EXTENSIONS:
        if etype == 0x000D and grease:
            extensions.append(standard_ext(etype, sig_algs=[0x3A3A, *FOXIO_SIG_ALGS]))
        elif etype == 0x002B and grease:
            extensions.append(standard_ext(etype, versions=(0x4A4A, 0x0304, 0x0303)))
        elif etype == 0x000A and grease:
            extensions.append(standard_ext(etype, groups=(0x5A5A, 0x001D, 0x0017)))
        else:
            extensions.append(standard_ext(etype))
    if grease:
        extensions.append(ext(0xFAFA, b"\x00"))
    return client_hello(ciphers, extensions)


def server_hello(cipher: int, extensions: list[bytes], version: int = 0x0303) -> bytes:
    body = struct.pack("!H", version) + bytes(32) + vec8(bytes(32)) + struct.pack("!HB", cipher, 0)
    body += vec16(b"".join(extensions))
    return bytes((2,)) + len(body).to_bytes(3, "big") + body


def certificate_message(ders: list[bytes]) -> bytes:
    certs = b"".join(len(d).to_bytes(3, "big") + d for d in ders)
    body = len(certs).to_bytes(3, "big") + certs
    return bytes((11,)) + len(body).to_bytes(3, "big") + body


def records(payload: bytes, sizes: list[int] | None = None, ctype: int = 22, version: int = 0x0301) -> bytes:
    """``payload`` cut into TLS records of the given fragment sizes (the rest in a last record)."""
    out = []
    pos = 0
    for size in [*(sizes or []), len(payload)]:
        chunk = payload[pos : pos + size]
        if not chunk:
            break
        out.append(struct.pack("!BHH", ctype, version, len(chunk)) + chunk)
        pos += len(chunk)
    return b"".join(out)


# --- QUIC --------------------------------------------------------------------------------------
def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack("!H", 0x4000 | value)
    return struct.pack("!I", 0x80000000 | value)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def initial_packet(version: int, dcid: bytes, scid: bytes, pn: int, frames: bytes, pad_to: int = 0,
                   key_dcid: bytes | None = None) -> bytes:  # fmt: skip
    """A protected client Initial packet of QUIC ``version`` carrying ``frames``."""
    params = quic_crypto.VERSIONS[version]
    if pad_to:
        frames = frames + bytes(max(0, pad_to - len(frames)))
    pn_len = 2
    first = 0xC0 | params.initial_type << 4 | (pn_len - 1)
    length = pn_len + len(frames) + 16
    header = (
        bytes((first,))
        + struct.pack("!I", version)
        + vec8(dcid)
        + vec8(scid)
        + varint(0)  # token length
        + struct.pack("!H", 0x4000 | length)
        + pn.to_bytes(pn_len, "big")
    )
    keys = quic_crypto.initial_keys(key_dcid or dcid, params)
    return quic_crypto.protect(header, pn_len, frames, keys)
