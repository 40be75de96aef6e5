"""JA3, JA3S and JA4 TLS fingerprints from already-parsed hello values.

Plain functions over ints and bytes so that TLS-over-TCP and QUIC share them. GREASE values
(RFC 8701: 0x0a0a, 0x1a1a, ... 0xfafa) are random per connection and would make every
fingerprint unique, so every algorithm leaves them out.

* JA3 / JA3S: https://github.com/salesforce/ja3 (MD5 of the comma/dash string).
* JA4: FoxIO's spec (https://github.com/FoxIO-LLC/ja4, technical_details/JA4.md).

JA4 comes in two flavours that differ only in corner cases of part c / part b:

* ``"foxio"``: the spec and FoxIO's own tools. No signature algorithms: the hashed string has
  no trailing underscore; an empty cipher or extension list gives ``000000000000``.
* ``"suricata"``: Suricata 8, the reference IDS of the project's test corpus. Always joins
  extensions and signature algorithms with "_" and always hashes (empty lists included).

``JA4_STYLE`` picks the flavour the decoders report; it is "suricata" so that our values equal
the reference IDS's (e.g. a TLS 1.0 hello without signature_algorithms in the corpus).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))

EXT_SNI = 0x0000
EXT_ALPN = 0x0010

JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
JA4_EMPTY_HASH = "000000000000"
JA4_STYLE = "suricata"  # "suricata" | "foxio": see the module docstring


def is_grease(value: int) -> bool:
    return value in GREASE


def _dash(values: Iterable[int]) -> str:
    return "-".join(str(v) for v in values if v not in GREASE)


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def ja3(
    version: int,
    ciphers: Sequence[int],
    extensions: Sequence[int],
    groups: Sequence[int],
    point_formats: Sequence[int],
) -> str:
    """JA3 string: legacy ClientHello version, ciphers, extensions, groups, point formats."""
    return f"{version},{_dash(ciphers)},{_dash(extensions)},{_dash(groups)},{_dash(point_formats)}"


def ja3s(version: int, cipher: int, extensions: Sequence[int]) -> str:
    """JA3S string: legacy ServerHello version, selected cipher, extensions."""
    return f"{version},{cipher},{_dash(extensions)}"


def _alpn_chars(alpn: bytes | None) -> str:
    """First and last character of the first ALPN value ("00" when none), per the JA4 spec."""
    if not alpn:
        return "00"
    first, last = alpn[0], alpn[-1]
    if _alnum(first) and _alnum(last):
        return chr(first) + chr(last)
    hexed = alpn.hex()
    return hexed[0] + hexed[-1]


def _alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def first_alpn(alpn_values: Sequence[bytes]) -> bytes | None:
    """The first ALPN value that is not a GREASE value (JA4 ignores GREASE everywhere)."""
    for value in alpn_values:
        if len(value) == 2 and (value[0] << 8 | value[1]) in GREASE:
            continue
        return value
    return None


def ja4(
    *,
    quic: bool,
    legacy_version: int,
    supported_versions: Sequence[int] | None,
    has_sni: bool,
    ciphers: Sequence[int],
    extensions: Sequence[int],
    alpn: bytes | None,
    sig_algs: Sequence[int],
    style: str | None = None,
) -> str:
    """JA4 of a ClientHello.

    ``supported_versions`` is None when the extension is absent; ``alpn`` is the first ALPN
    value (see ``first_alpn``) or None; ``style`` "foxio" or "suricata" (default JA4_STYLE).
    """
    foxio = (style or JA4_STYLE) == "foxio"
    versions = [v for v in supported_versions or () if v not in GREASE]
    version = max(versions) if versions else legacy_version
    ciphers = [c for c in ciphers if c not in GREASE]
    exts = [e for e in extensions if e not in GREASE]
    part_a = "%s%s%s%02d%02d%s" % (  # noqa: UP031 - one format is clearest here
        "q" if quic else "t",
        JA4_VERSIONS.get(version, "00"),
        "d" if has_sni else "i",
        min(99, len(ciphers)),
        min(99, len(exts)),
        _alpn_chars(alpn),
    )
    sorted_ciphers = ",".join(sorted(f"{c:04x}" for c in ciphers))
    part_b = _sha12(sorted_ciphers) if ciphers or not foxio else JA4_EMPTY_HASH
    hashed_exts = sorted(f"{e:04x}" for e in exts if e != EXT_SNI and e != EXT_ALPN)
    sigs = ",".join(f"{s:04x}" for s in sig_algs if s not in GREASE)
    if not foxio:
        part_c = _sha12(",".join(hashed_exts) + "_" + sigs)
    elif hashed_exts:
        part_c = _sha12(",".join(hashed_exts) + ("_" + sigs if sigs else ""))
    else:
        part_c = JA4_EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}"


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py). A TLS ClientHello's
# JA3 and JA4 with it: 26.5 -> 21.2 us a hello (sv-merged's 115, five passes, timeit-style).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("first_alpn", "ja3", "ja3s", "ja4", "md5_hex", "is_grease"))
