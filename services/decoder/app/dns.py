"""DNS message decoding (UDP datagrams and TCP length-prefixed messages).

Everything here reads attacker-controlled bytes: every length is checked, name compression
pointers may only jump backwards and a name is bounded in labels, bytes and jumps. A record
that cannot be read ends the section walk (what was read so far is kept); a header that cannot
be read raises ``DnsError`` which the caller counts.

Output shapes (see shared/records.py): ``dns.queries`` is a list of ``[name, type]``,
``dns.answers`` / ``dns.authorities`` / ``dns.additionals`` lists of
``[name, type, ttl, data]``. Names have no trailing dot; the root name is ``"<root>"`` (what
the reference IDS prints). Bytes outside printable ASCII, and a literal dot inside a label,
are kept as-is except control/non-ASCII bytes which are escaped ``\\xNN``.
"""

from __future__ import annotations

import struct

from services.decoder.app.dns_types import TYPE_NAMES, type_name

ROOT_NAME = "<root>"
MAX_NAME_BYTES = 255  # wire bytes of a name (RFC 1035)
MAX_JUMPS = 32  # compression pointers followed per name
MAX_RECORDS = 256  # records decoded per message (the rest are counted as skipped)
MAX_TXT_BYTES = 1024  # text shown for TXT/NULL/unknown data

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRTAIL = struct.Struct("!HHIH")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_MX = struct.Struct("!H")
_SRV = struct.Struct("!HHH")
_SOA = struct.Struct("!IIIII")

_PRINTABLE = bytes(range(0x21, 0x7F))


class DnsError(ValueError):
    """A message that cannot be decoded at all (bad header, truncated question)."""


def _label_text(raw: bytes) -> str:
    """Printable ASCII as-is; anything else escaped so names are safe to print and log."""
    if not raw.translate(None, _PRINTABLE):
        return raw.decode("ascii")
    return "".join(chr(b) if 0x21 <= b < 0x7F else f"\\x{b:02x}" for b in raw)


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    """Read a (possibly compressed) name at ``off``; return (text, offset after it in place).

    Pointers must point strictly before the place they were read from, so loops end; jumps,
    labels and total length are bounded too.
    """
    end = len(msg)
    labels: list[bytes] = []
    total = 0
    jumps = 0
    after = -1
    pos = off
    limit = off  # pointers must go below the start of the current run
    while True:
        if pos >= end:
            raise DnsError("name runs past the message")
        ln = msg[pos]
        if ln == 0:
            pos += 1
            break
        kind = ln & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise DnsError("truncated compression pointer")
            target = ((ln & 0x3F) << 8) | msg[pos + 1]
            if after < 0:
                after = pos + 2
            jumps += 1
            if jumps > MAX_JUMPS or target >= limit:
                raise DnsError("compression pointer loop or forward pointer")
            limit = target
            pos = target
            continue
        if kind:
            raise DnsError("reserved label type")
        pos += 1
        if pos + ln > end:
            raise DnsError("label runs past the message")
        total += ln + 1
        if total > MAX_NAME_BYTES:
            raise DnsError("name too long")
        labels.append(msg[pos : pos + ln])
        pos += ln
    if after < 0:
        after = pos
    if not labels:
        return ROOT_NAME, after
    raw = b".".join(labels)
    if not raw.translate(None, _PRINTABLE):
        return raw.decode("ascii"), after
    return ".".join(_label_text(label) for label in labels), after


def _char_strings(data: bytes) -> str:
    """TXT data: the character-strings concatenated (bounded)."""
    parts = []
    pos = 0
    n = len(data)
    while pos < n:
        ln = data[pos]
        parts.append(data[pos + 1 : pos + 1 + ln])
        pos += 1 + ln
    text = b"".join(parts)[:MAX_TXT_BYTES]
    return text.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPE)


_CONTROL_ESCAPE = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f"}


def _ipv6_text(b: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(b))


def _rdata(msg: bytes, rtype: int, start: int, rdlen: int) -> str:
    """Presentation text of one record's data; hex for types without a decoder."""
    data = msg[start : start + rdlen]
    if rtype == 1 and rdlen == 4:
        return f"{data[0]}.{data[1]}.{data[2]}.{data[3]}"
    if rtype == 28 and rdlen == 16:
        return _ipv6_text(data)
    if rtype in (2, 5, 12, 39):  # NS CNAME PTR DNAME
        return read_name(msg, start)[0]
    if rtype == 15 and rdlen >= 3:  # MX
        pref = _MX.unpack_from(msg, start)[0]
        return f"{pref} {read_name(msg, start + 2)[0]}"
    if rtype == 16 or rtype == 99:  # TXT SPF
        return _char_strings(data)
    if rtype == 33 and rdlen >= 7:  # SRV
        prio, weight, port = _SRV.unpack_from(msg, start)
        return f"{prio} {weight} {port} {read_name(msg, start + 6)[0]}"
    if rtype == 6:  # SOA
        mname, p = read_name(msg, start)
        rname, p = read_name(msg, p)
        if p + 20 > start + rdlen:
            raise DnsError("short SOA")
        serial, refresh, retry, expire, minimum = _SOA.unpack_from(msg, p)
        return f"{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
    if (rtype == 64 or rtype == 65) and rdlen >= 3:  # SVCB / HTTPS: priority target params(hex)
        prio = _MX.unpack_from(msg, start)[0]
        target, p = read_name(msg, start + 2)
        params = msg[p : start + rdlen]
        return f"{prio} {target} {params[:MAX_TXT_BYTES].hex()}".rstrip()
    return data[:MAX_TXT_BYTES].hex()


def parse_message(msg: bytes, counters=None) -> dict:
    """Decode one DNS message into display-filter fields; raise DnsError for a bad header.

    Records after one that cannot be read are dropped (counted in ``counters`` when given).
    """
    n = len(msg)
    if n < 12:
        raise DnsError("short header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 0)
    off = 12
    queries = []
    for _ in range(min(qd, MAX_RECORDS)):
        name, off = read_name(msg, off)
        if off + 4 > n:
            raise DnsError("truncated question")
        qtype = _QTAIL.unpack_from(msg, off)[0]
        off += 4
        queries.append([name, TYPE_NAMES.get(qtype) or type_name(qtype)])
    fields = {
        "dns.id": ident,
        "dns.flags.value": flags,
        "dns.flags.response": bool(flags & 0x8000),
        "dns.opcode": (flags >> 11) & 0xF,
        "dns.rcode": flags & 0xF,
        "dns.count.queries": qd,
        "dns.count.answers": an,
        "dns.count.auth_rr": ns,
        "dns.count.add_rr": ar,
        "dns.queries": queries,
    }
    budget = MAX_RECORDS
    for key, count in (("dns.answers", an), ("dns.authorities", ns), ("dns.additionals", ar)):
        if not count:
            continue
        records = []
        try:
            for _ in range(count):
                if budget <= 0:
                    if counters is not None:
                        counters["dns_records_over_bound"] += 1
                    break
                budget -= 1
                name, off = read_name(msg, off)
                if off + 10 > n:
                    raise DnsError("truncated record header")
                rtype, _rclass, ttl, rdlen = _RRTAIL.unpack_from(msg, off)
                off += 10
                if off + rdlen > n:
                    raise DnsError("record data past the message")
                # OPT: class is the UDP size, ttl the extended flags; its data is shown raw
                data = msg[off : off + rdlen].hex() if rtype == 41 else _rdata(msg, rtype, off, rdlen)
                off += rdlen
                records.append([name, TYPE_NAMES.get(rtype) or type_name(rtype), ttl, data])
        except (DnsError, IndexError, struct.error, ValueError):
            if counters is not None:
                counters["dns_record_errors"] += 1
            fields[key] = records
            break
        fields[key] = records
    return fields


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("DnsError", "parse_message", "read_name"))
