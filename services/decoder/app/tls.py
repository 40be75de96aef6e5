"""TLS handshake fields from the first bytes of each direction of a TCP connection.

``parse_client`` reads the ClientHello (SNI, ALPN, offered parameters, JA3 and JA4);
``parse_server`` reads the ServerHello (JA3S, negotiated version, ALPN) and, for TLS <= 1.2,
the leaf certificate of the Certificate message. Both take the stream's bytes from its start
(the dispatcher re-calls them with more bytes while they answer "more") and return
``(fields, status)``, status being "done", "more" or "no" (not TLS / unusable).

Handshake messages may span several records and records several TCP segments: the fragments
of consecutive handshake records are joined before a message is read. Everything read is
attacker-controlled: lengths are checked, buffers are bounded, and no exception escapes (a
malformed hello or certificate is counted in ``counters`` and answered with "no" / skipped).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import NamedTuple

from services.decoder.app.fingerprints import first_alpn, ja3, ja3s, ja4, md5_hex

counters: Counter = Counter()  # parse problems, for the decoder's stats

DONE, MORE, NO = "done", "more", "no"

CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA = 20, 21, 22, 23
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_CERTIFICATE = 1, 2, 11

MAX_RECORD = 16384 + 2048  # largest TLSCiphertext fragment allowed by RFC 8446 5.2
MAX_HELLO = 65536  # a larger ClientHello is not a real one
SERVER_MAX_BYTES = 16000  # server bytes read before settling for the fields found so far
MAX_LIST = 256  # items kept of any list field (SANs, ALPN values)

EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS = 0x0000, 0x000A, 0x000B, 0x000D
EXT_ALPN, EXT_SUPPORTED_VERSIONS = 0x0010, 0x002B

_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_RECORD = struct.Struct("!BHH")  # content type, version, length

_CONTROL_ESCAPE = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f"}
_PLAIN = bytes(range(0x20, 0x7F))


def wire_text(raw: bytes) -> str:
    """Bytes from the wire as printable text: UTF-8 where valid, other bytes and controls escaped."""
    raw = bytes(raw[:1024])
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPE)


class ClientHello(NamedTuple):
    """The ClientHello values the fingerprints and fields need, as found on the wire."""

    version: int
    ciphers: list[int]
    extensions: list[int]
    sni: bytes | None
    alpn: list[bytes]
    groups: list[int]
    point_formats: list[int]
    sig_algs: list[int]
    supported_versions: list[int] | None  # None: extension absent


class MalformedHello(ValueError):
    """A complete hello message whose contents do not add up."""


# --- record layer ---------------------------------------------------------------------------
def handshake_bytes(data: bytes, limit: int = MAX_HELLO + 4) -> tuple[bytes, str]:
    """Join the fragments of the leading handshake records (a partial last record included).

    Returns the joined bytes and why joining stopped: MORE (data ran out or ``limit`` reached),
    "other" (a record of another content type follows) or NO (a record header is invalid).
    """
    parts = []
    total = 0
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 5:
            return b"".join(parts), MORE
        ctype, version, length = _RECORD.unpack_from(data, pos)
        if version >> 8 != 3 or length == 0 or length > MAX_RECORD:
            return b"".join(parts), NO
        if ctype != CT_HANDSHAKE:
            return b"".join(parts), "other"
        frag = data[pos + 5 : pos + 5 + length]
        parts.append(frag)
        total += len(frag)
        pos += 5 + length
        if total >= limit:
            break
    return b"".join(parts), MORE


def _looks_like_handshake(data: bytes, hs_type: int) -> bool:
    """Cheap test of the first (up to) 6 bytes: a handshake record starting with ``hs_type``."""
    n = len(data)
    if data[0] != CT_HANDSHAKE:
        return False
    if n >= 2 and data[1] != 3:
        return False
    if n >= 5:
        length = data[3] << 8 | data[4]
        if length == 0 or length > MAX_RECORD:
            return False
    return not (n >= 6 and data[5] != hs_type)


# --- ClientHello ----------------------------------------------------------------------------
def parse_client(data: bytes) -> tuple[dict, str]:
    """ClientHello fields from the start of the client->server stream."""
    try:
        if not data:
            return {}, MORE
        if not _looks_like_handshake(data, HS_CLIENT_HELLO):
            return {}, NO
        hs, state = handshake_bytes(data)
        if len(hs) < 4:
            return {}, (MORE if state == MORE else NO)
        length = hs[1] << 16 | hs[2] << 8 | hs[3]
        if length > MAX_HELLO:
            counters["tls_hello_too_long"] += 1
            return {}, NO
        if len(hs) < 4 + length:
            return {}, (MORE if state == MORE else NO)
        hello = parse_client_hello(hs[4 : 4 + length])
        return client_fields(hello), DONE
    except (MalformedHello, struct.error, IndexError, ValueError):
        counters["tls_client_hello_malformed"] += 1
        return {}, NO
    except Exception as exc:  # never let a decoder bug stop the pipeline
        counters[f"tls_client_exception_{type(exc).__name__}"] += 1
        return {}, NO


def _u16_list(body: bytes, start: int, end: int) -> list[int]:
    if (end - start) & 1 or end > len(body):
        raise MalformedHello("odd or overlong 16-bit list")
    return list(struct.unpack_from(f"!{(end - start) >> 1}H", body, start))


def parse_client_hello(body: bytes) -> ClientHello:
    """The values of a ClientHello message body (after the 4-byte handshake header)."""
    end = len(body)
    if end < 38:
        raise MalformedHello("short ClientHello")
    version = _U16.unpack_from(body, 0)[0]
    pos = 34 + 1 + body[34]  # version, random, session id
    (cs_len,) = _U16.unpack_from(body, pos)
    pos += 2
    ciphers = _u16_list(body, pos, pos + cs_len)
    pos += cs_len
    if pos >= end:
        raise MalformedHello("no compression methods")
    pos += 1 + body[pos]
    if pos > end:
        raise MalformedHello("compression methods overrun")
    extensions: list[int] = []
    sni = None
    alpn: list[bytes] = []
    groups: list[int] = []
    point_formats: list[int] = []
    sig_algs: list[int] = []
    supported_versions = None
    if pos + 2 <= end:
        (ext_total,) = _U16.unpack_from(body, pos)
        pos += 2
        ext_end = pos + ext_total
        if ext_end > end:
            raise MalformedHello("extensions overrun")
        while pos + 4 <= ext_end:
            etype, elen = _U16x2.unpack_from(body, pos)
            pos += 4
            estart, pos = pos, pos + elen
            if pos > ext_end:
                raise MalformedHello("extension overrun")
            extensions.append(etype)
            if etype == EXT_SNI:
                sni = _sni(body, estart, pos)
            elif etype == EXT_ALPN:
                alpn = _alpn_list(body, estart, pos)
            elif etype == EXT_GROUPS:
                groups = _u16_list(body, estart + 2, min(pos, estart + 2 + _U16.unpack_from(body, estart)[0]))
            elif etype == EXT_POINT_FORMATS:
                point_formats = list(body[estart + 1 : min(pos, estart + 1 + body[estart])])
            elif etype == EXT_SIG_ALGS:
                sig_algs = _u16_list(
                    body, estart + 2, min(pos, estart + 2 + _U16.unpack_from(body, estart)[0])
                )
            elif etype == EXT_SUPPORTED_VERSIONS:
                supported_versions = _u16_list(body, estart + 1, min(pos, estart + 1 + body[estart]))
    return ClientHello(
        version, ciphers, extensions, sni, alpn, groups, point_formats, sig_algs, supported_versions
    )


def _sni(body: bytes, start: int, end: int) -> bytes | None:
    """The first host_name of a server_name extension."""
    if end - start < 2:
        return None
    pos = start + 2
    while pos + 3 <= end:
        name_type = body[pos]
        (length,) = _U16.unpack_from(body, pos + 1)
        pos += 3
        if pos + length > end:
            raise MalformedHello("server name overrun")
        if name_type == 0:
            return body[pos : pos + length]
        pos += length
    return None


def _alpn_list(body: bytes, start: int, end: int) -> list[bytes]:
    values = []
    pos = start + 2
    while pos < end and len(values) < MAX_LIST:
        length = body[pos]
        pos += 1
        if pos + length > end:
            raise MalformedHello("ALPN overrun")
        values.append(body[pos : pos + length])
        pos += length
    return values


def client_fields(hello: ClientHello) -> dict:
    """The tls.* display-filter fields of a ClientHello."""
    ja3_text = ja3(hello.version, hello.ciphers, hello.extensions, hello.groups, hello.point_formats)
    fields = {
        "tls.version": hello.version,
        "tls.cipher_suites": hello.ciphers,
        "tls.extensions": hello.extensions,
        "tls.supported_groups": hello.groups,
        "tls.ec_point_formats": hello.point_formats,
        "tls.sig_algs": hello.sig_algs,
        "tls.ja3": ja3_text,
        "tls.ja3_hash": md5_hex(ja3_text),
        "tls.ja4": hello_ja4(hello, quic=False),
    }
    if hello.supported_versions is not None:
        fields["tls.supported_versions"] = hello.supported_versions
    if hello.sni is not None:
        fields["tls.sni"] = wire_text(hello.sni)
    if hello.alpn:
        fields["tls.alpn"] = [wire_text(v) for v in hello.alpn]
    return fields


def hello_ja4(hello: ClientHello, *, quic: bool) -> str:
    return ja4(
        quic=quic,
        legacy_version=hello.version,
        supported_versions=hello.supported_versions,
        has_sni=EXT_SNI in hello.extensions,
        ciphers=hello.ciphers,
        extensions=hello.extensions,
        alpn=first_alpn(hello.alpn),
        sig_algs=hello.sig_algs,
    )


# --- ServerHello and Certificate ------------------------------------------------------------
def parse_server(data: bytes) -> tuple[dict, str]:
    """ServerHello (and TLS <= 1.2 leaf certificate) fields from the server->client stream."""
    try:
        if not data:
            return {}, MORE
        if not _looks_like_handshake(data, HS_SERVER_HELLO):
            return {}, NO
        hs, state = handshake_bytes(data)
        if len(hs) < 4:
            return {}, (MORE if state == MORE else NO)
        length = hs[1] << 16 | hs[2] << 8 | hs[3]
        if length > MAX_HELLO:
            return {}, NO
        if len(hs) < 4 + length:
            return {}, (MORE if state == MORE else NO)
        fields, tls13 = _server_hello(hs[4 : 4 + length])
        if tls13:
            return fields, DONE
        status = _certificate(hs, 4 + length, fields)
        if status == MORE and (state != MORE or len(data) >= SERVER_MAX_BYTES):
            status = DONE  # encrypted/other records follow, or enough read: settle
        return (fields, DONE) if status == DONE else ({}, MORE)
    except (MalformedHello, struct.error, IndexError, ValueError):
        counters["tls_server_hello_malformed"] += 1
        return {}, NO
    except Exception as exc:  # never let a decoder bug stop the pipeline
        counters[f"tls_server_exception_{type(exc).__name__}"] += 1
        return {}, NO


def _server_hello(body: bytes) -> tuple[dict, bool]:
    """ServerHello fields, and whether TLS 1.3 was negotiated (nothing more in clear then)."""
    end = len(body)
    version = _U16.unpack_from(body, 0)[0]
    if version >> 8 == 0x7F or version >= 0x0304:  # TLS 1.3 drafts < 22: no session id, compression
        pos = 34
        (cipher,) = _U16.unpack_from(body, pos)
        pos += 2
    else:
        pos = 34 + 1 + body[34]
        (cipher,) = _U16.unpack_from(body, pos)
        pos += 3  # cipher suite, compression method
    if pos > end:
        raise MalformedHello("short ServerHello")
    extensions = []
    selected = version
    alpn = None
    if pos + 2 <= end:
        (ext_total,) = _U16.unpack_from(body, pos)
        pos += 2
        ext_end = min(end, pos + ext_total)
        while pos + 4 <= ext_end:
            etype, elen = _U16x2.unpack_from(body, pos)
            pos += 4
            estart, pos = pos, pos + elen
            if pos > ext_end:
                raise MalformedHello("extension overrun")
            extensions.append(etype)
            if etype == EXT_SUPPORTED_VERSIONS and elen >= 2:
                (selected,) = _U16.unpack_from(body, estart)
            elif etype == EXT_ALPN and elen >= 3:
                alpn = body[estart + 3 : min(pos, estart + 3 + body[estart + 2])]
    text = ja3s(version, cipher, extensions)
    fields = {
        "tls.ja3s": text,
        "tls.ja3s_hash": md5_hex(text),
        "tls.negotiated_version": selected,
        "tls.cipher_suite": cipher,
    }
    if alpn is not None:
        fields["tls.alpn_selected"] = wire_text(alpn)
    return fields, selected >= 0x0304


def _certificate(hs: bytes, pos: int, fields: dict) -> str:
    """Leaf certificate fields if the next message is a Certificate; MORE if its bytes are missing."""
    if len(hs) < pos + 4:
        return MORE
    if hs[pos] != HS_CERTIFICATE:
        return DONE  # resumption or anonymous: no certificate in clear
    leaf_at = pos + 4 + 3 + 3  # handshake header, certificate_list length, first cert length
    if len(hs) < leaf_at:
        return MORE
    leaf_len = hs[leaf_at - 3] << 16 | hs[leaf_at - 2] << 8 | hs[leaf_at - 1]
    if len(hs) < leaf_at + leaf_len:
        return MORE
    fields.update(certificate_fields(hs[leaf_at : leaf_at + leaf_len]))
    return DONE


# Leaf certificates already read, by their DER bytes: the same servers' certificates come back
# in connection after connection, and reading one with cryptography is ~50 us (sv-merged: 70
# certificates, 31 distinct, 3.5 ms). Only cleanly parsed ones are kept (so every problem is still
# counted each time it is seen); bounded by emptying it when full.
_CERT_CACHE: dict[bytes, dict] = {}
CERT_CACHE_MAX = 512


def certificate_fields(der: bytes) -> dict:
    """Subject, issuer and DNS SANs of a DER certificate; {} (counted) when it does not parse."""
    known = _CERT_CACHE.get(der)
    if known is not None:
        return {k: list(v) if type(v) is list else v for k, v in known.items()}  # lists not shared
    from cryptography import x509  # imported on first use: most decoders never see a cert

    try:
        cert = x509.load_der_x509_certificate(der)
        fields = {"tls.cert.subject": _name(cert.subject), "tls.cert.issuer": _name(cert.issuer)}
    except Exception:  # cryptography raises several types for bad DER
        counters["tls_cert_unparsed"] += 1
        return {}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)[:MAX_LIST]
        fields["tls.cert.san"] = [wire_text(n.encode("utf-8", "replace")) for n in names]
    except x509.ExtensionNotFound:
        pass
    except Exception:
        counters["tls_cert_bad_extensions"] += 1
        return fields
    if len(_CERT_CACHE) >= CERT_CACHE_MAX:
        _CERT_CACHE.clear()
    _CERT_CACHE[bytes(der)] = {k: list(v) if type(v) is list else v for k, v in fields.items()}
    return fields


def _name(name) -> str:
    """A distinguished name in certificate order, e.g. "C=US, O=Example, CN=example.com"."""
    parts = []
    for attr in name:
        value = attr.value
        if isinstance(value, bytes):
            value = value.hex()
        parts.append(f"{attr.rfc4514_attribute_name}={wire_text(value.encode('utf-8', 'replace'))}")
    return ", ".join(parts)
