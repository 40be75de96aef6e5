"""Literal values of a filter and how they compare with the values found in a packet.

A literal is parsed once into every form it could take (number, boolean, address or CIDR
network, MAC, bytes, text); at match time the type of the packet's value picks the form.
"""

from __future__ import annotations

import operator
import re
import socket
from functools import lru_cache

from .lexer import FilterError

_ORDER = {
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
_HEXBYTES_RE = re.compile(r"^[0-9A-Fa-f]{2}([:.-][0-9A-Fa-f]{2})+$")
_TRUE = frozenset(("1", "true", "True", "TRUE"))
_FALSE = frozenset(("0", "false", "False", "FALSE"))


@lru_cache(maxsize=16384)
def parse_address(text: str) -> tuple[int, int] | None:
    """Parse an IP address: '10.0.0.1' -> (4, int), '::1' -> (6, int); None when it is not one."""
    fam, ver = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        raw = socket.inet_pton(fam, text)
    except (OSError, ValueError):
        return None
    if ver == 4 and text.count(".") != 3:
        return None
    return ver, int.from_bytes(raw, "big")


def _parse_number(text: str) -> int | float | None:
    try:
        if text[:2].lower() == "0x" or text[:3].lower() == "-0x":
            return int(text, 16)
        if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
            return int(text, 10)
        if any(c.isdigit() for c in text) and "." in text and text.count(".") == 1:
            return float(text)
    except ValueError:
        return None
    return None


class Literal:
    """One value written in a filter, pre-parsed into the forms a packet value may need."""

    __slots__ = ("text", "num", "boolean", "net", "mac", "raw", "col")

    def __init__(self, text: str, col: int, quoted: bool) -> None:
        self.text = text
        self.col = col
        self.num = _parse_number(text)
        self.boolean = True if text in _TRUE else False if text in _FALSE else None
        self.mac = text.lower().replace("-", ":") if _MAC_RE.match(text) else None
        self.raw = text.encode("utf-8", "surrogatepass")
        if not quoted:  # bare 16:03:01 is bytes; "16:03:01" is text
            raw = bare_bytes(text)
            if raw is not None:
                self.raw = raw
        self.net: tuple[int, int, int] | None = None  # (version, network, mask)
        try:
            self.net = _parse_network(text, col)
        except FilterError:
            if not quoted:
                raise

    def __repr__(self) -> str:
        return f"Literal({self.text!r})"


def bare_bytes(text: str) -> bytes | None:
    """Wireshark's reading of an unquoted value as bytes: 16:03:01, 0a, 0x0a, 1 (one byte 0x01)."""
    if _HEXBYTES_RE.match(text):
        return bytes.fromhex(re.sub("[:.-]", "", text))
    if text[:2].lower() == "0x" and 2 < len(text) <= 4 and all(c in _HEX for c in text[2:]):
        return bytes((int(text, 16),))
    if 1 <= len(text) <= 2 and all(c in _HEX for c in text):
        return bytes((int(text, 16),))
    return None


_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_network(text: str, col: int) -> tuple[int, int, int] | None:
    """Address or CIDR -> (version, network, mask); None when ``text`` is no address at all."""
    addr_text, slash, prefix_text = text.partition("/")
    addr = parse_address(addr_text)
    if addr is None:
        if slash and (addr_text.count(".") == 3 or ":" in addr_text):
            raise FilterError(col, f"bad CIDR '{text}': '{addr_text}' is not an IP address")
        return None
    ver, value = addr
    bits = 32 if ver == 4 else 128
    if not slash:
        return ver, value, (1 << bits) - 1
    if not prefix_text.isdigit() or int(prefix_text) > bits:
        raise FilterError(col, f"bad CIDR '{text}': prefix length must be 0..{bits}")
    prefix = int(prefix_text)
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return ver, value & mask, mask


class Mnemonic(str):
    """A number shown by its name (a DNS record type "AAAA" = 28): compares as either.

    A str subclass, so JSON output and printing show the name; ``== 28`` and ``== AAAA`` both hold.
    """

    __slots__ = ("num",)

    def __new__(cls, name: str, num: int) -> Mnemonic:
        self = super().__new__(cls, name)
        self.num = num
        return self


def _scalar(value: object) -> object:
    """A {"value": ...} node compares by its value; everything else as itself."""
    if type(value) is dict:
        return value.get("value")
    return value


def _str_number(text: str) -> int | float | None:
    if text.isdigit():
        return int(text)
    return _parse_number(text)


def compare(value: object, lit: Literal, op: str) -> bool:
    """``value op lit`` for op in == < > <= >=, choosing the comparison by the packet value's type."""
    t = type(value)
    if t is dict:
        value = value.get("value")
        t = type(value)
    fn = _ORDER[op]
    if t is Mnemonic:
        if lit.num is not None:
            return fn(value.num, lit.num)  # type: ignore[union-attr]
        return fn(str(value), lit.text)
    if t is bool:
        return lit.boolean is not None and fn(value, lit.boolean)
    if t is int or t is float:
        if lit.num is not None:
            return fn(value, lit.num)
        if lit.boolean is not None:
            return fn(value, int(lit.boolean))
        return False
    if t is str:
        if op == "==" and value == lit.text:
            return True
        if lit.net is not None:
            addr = parse_address(value)
            if addr is not None:
                ver, mask = lit.net[0], lit.net[2]
                if addr[0] != ver:
                    return False
                return fn(addr[1] & mask, lit.net[1])
        if lit.mac is not None and len(value) == 17:
            return fn(value.lower().replace("-", ":"), lit.mac)
        if lit.num is not None:
            n = _str_number(value)
            if n is not None:
                return fn(n, lit.num)
        return fn(value, lit.text)
    if t is bytes or t is bytearray:
        return fn(bytes(value), lit.raw)
    return False


def _comparable(value: object) -> tuple[int, object] | None:
    """A value reduced to (kind, key) so two packet values can be ordered: numbers, addresses, text."""
    t = type(value)
    if t is dict:
        value = value.get("value")  # type: ignore[union-attr]
        t = type(value)
    if t is Mnemonic:
        return 0, value.num  # type: ignore[union-attr]
    if t is bool or t is int or t is float:
        return 0, value
    if t is str:
        addr = parse_address(value)  # type: ignore[arg-type]
        if addr is not None:
            return addr[0], addr[1]
        if _MAC_RE.match(value):  # type: ignore[arg-type]
            return 1, value.lower().replace("-", ":")  # type: ignore[union-attr]
        return 2, value
    if t is bytes or t is bytearray:
        return 3, bytes(value)  # type: ignore[arg-type]
    return None


def compare_values(a: object, b: object, op: str) -> bool:
    """``a op b`` for two values found in the packet (field-to-field comparisons)."""
    ka, kb = _comparable(a), _comparable(b)
    if ka is None or kb is None or ka[0] != kb[0]:
        return False
    return _ORDER[op](ka[1], kb[1])


def contains(value: object, lit: Literal) -> bool:
    """Substring for text and bytes, equality for numbers (list elements are walked by the caller)."""
    value = _scalar(value)
    t = type(value)
    if t is str:
        return lit.text in value
    if t is bytes or t is bytearray:
        return lit.raw in value
    if value is None:
        return False
    return compare(value, lit, "==")


def as_text(value: object) -> str | None:
    """The text a regular expression runs over."""
    value = _scalar(value)
    t = type(value)
    if t is str:
        return value
    if t is bytes or t is bytearray:
        return bytes(value).decode("latin-1")
    if value is None:
        return None
    if t is bool:
        return "1" if value else "0"
    return str(value)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('Literal', 'Mnemonic', 'compare', 'compare_values', 'contains', 'as_text'))
