"""QUIC Initial packet protection (RFC 9001 section 5, RFC 9369 section 3.3).

Initial packets are encrypted with keys anyone can derive from the client's first Destination
Connection ID and a per-version salt, so a passive observer can read the ClientHello. This
module derives those keys and removes header and packet protection; quic.py does the parsing.
"""

from __future__ import annotations

from typing import NamedTuple

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")

_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")


class VersionParams(NamedTuple):
    salt: bytes
    labels: tuple[bytes, bytes, bytes]
    initial_type: int  # long-header packet type code of Initial packets
    retry_type: int


V1_PARAMS = VersionParams(SALT_V1, _LABELS_V1, 0, 3)
V2_PARAMS = VersionParams(SALT_V2, _LABELS_V2, 1, 0)
DRAFT29_PARAMS = VersionParams(SALT_DRAFT29, _LABELS_V1, 0, 3)

# versions whose Initial packets we can read: v1, v2, and drafts 29-34 (same packet layout)
VERSIONS: dict[int, VersionParams] = {QUIC_V1: V1_PARAMS, QUIC_V2: V2_PARAMS}
for _draft in range(29, 33):
    VERSIONS[0xFF000000 + _draft] = DRAFT29_PARAMS
for _draft in (33, 34):
    VERSIONS[0xFF000000 + _draft] = V1_PARAMS


class InitialKeys(NamedTuple):
    aead: AESGCM
    iv: bytes
    hp_key: bytes


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 7.1) with an empty context."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_secrets(dcid: bytes, params: VersionParams, client: bool = True) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting Initial packets sent by the client (or the server)."""
    initial = hkdf_extract(params.salt, dcid)
    secret = hkdf_expand_label(initial, b"client in" if client else b"server in", 32)
    key_label, iv_label, hp_label = params.labels
    return (
        hkdf_expand_label(secret, key_label, 16),
        hkdf_expand_label(secret, iv_label, 12),
        hkdf_expand_label(secret, hp_label, 16),
    )


def initial_keys(dcid: bytes, params: VersionParams, client: bool = True) -> InitialKeys:
    key, iv, hp = initial_secrets(dcid, params, client)
    return InitialKeys(AESGCM(key), iv, hp)


def header_mask(hp_key: bytes, sample: bytes) -> bytes:
    """AES-ECB header-protection mask (RFC 9001 5.4.3)."""
    enc = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()
    return enc.update(sample) + enc.finalize()


def unprotect(packet: bytes, pn_offset: int, end: int, keys: InitialKeys) -> tuple[int, bytes] | None:
    """Decrypt one long-header packet ``packet[:end]``; (packet number, payload) or None.

    ``pn_offset`` is where the packet number starts (after the Length field). Raises
    cryptography's InvalidTag when the keys or the bytes are wrong.
    """
    if end - pn_offset < 20 or end > len(packet):
        return None
    mask = header_mask(keys.hp_key, packet[pn_offset + 4 : pn_offset + 20])
    first = packet[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(packet[pn_offset : pn_offset + pn_len], mask[1:], strict=False))
    pn = int.from_bytes(pn_bytes, "big")
    header = bytes((first,)) + packet[1:pn_offset] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    payload = keys.aead.decrypt(nonce, packet[pn_offset + pn_len : end], header)
    return pn, payload


def protect(header: bytes, pn_len: int, payload: bytes, keys: InitialKeys) -> bytes:
    """Encrypt a packet whose plain ``header`` ends with a ``pn_len``-byte packet number.

    The inverse of ``unprotect``; used by tests to build Initial packets of any version.
    """
    pn_offset = len(header) - pn_len
    pn = int.from_bytes(header[pn_offset:], "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = keys.aead.encrypt(nonce, payload, header)
    packet = bytearray(header + sealed)
    mask = header_mask(keys.hp_key, bytes(packet[pn_offset + 4 : pn_offset + 20]))
    packet[0] ^= mask[0] & (0x0F if packet[0] & 0x80 else 0x1F)
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)
