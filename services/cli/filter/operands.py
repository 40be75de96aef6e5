"""The left (and right) side of a test: a field, a byte slice of it, ``len(field)``, ``field & mask``.

Wireshark's rules: a slice ``f[i:n]`` / ``f[i-j]`` / ``f[i]`` / ``f[-k:]`` (comma-separated
lists joined) turns the field's value into its bytes (addresses, MACs, strings, byte fields;
an integer cannot be sliced); ``len(f)`` is the byte length of that value; ``f & m`` is the
value ANDed with a mask (numbers, or bytes with bytes), true alone when non-zero.

Each operand is a getter ``packet -> list of values`` wrapped around fields.getter.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from .lexer import FilterError

Getter = Callable[[dict], list]

_MAC_TEXT = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_SLICE_PART = re.compile(r"^(-?\d*)(?:(:)(-?\d*)|(-)(\d+))?$")


def as_bytes(value: object) -> bytes | None:
    """The bytes Wireshark slices for a value: address/MAC bytes, string bytes, raw bytes."""
    t = type(value)
    if t is dict:
        value = value.get("value")  # type: ignore[union-attr]
        t = type(value)
    if t is bytes or t is bytearray:
        return bytes(value)  # type: ignore[arg-type]
    if t is str:
        if _MAC_TEXT.match(value):  # type: ignore[arg-type]
            return bytes.fromhex(value.replace(":", ""))  # type: ignore[union-attr]
        for fam in (socket.AF_INET, socket.AF_INET6):
            try:
                return socket.inet_pton(fam, value)  # type: ignore[arg-type]
            except (OSError, ValueError):
                pass
        return value.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
    return None


def parse_slice(spec: str, col: int) -> Callable[[bytes], bytes]:
    """A function cutting bytes as ``[spec]`` says; raises FilterError for a malformed spec."""
    parts = []
    for part in spec.split(","):
        m = _SLICE_PART.match(part.strip())
        if not m or part.strip() in ("", ":", "-"):
            raise FilterError(col, f"bad slice [{spec}]: expected [i], [i:n], [i-j], [i:] or [:n]")
        start = int(m.group(1)) if m.group(1) not in ("", "-") else 0
        if m.group(2):  # i:n -- a length, or to the end when n is missing
            length = int(m.group(3)) if m.group(3) else None
            if length is not None and length < 0:
                raise FilterError(col, f"bad slice [{spec}]: a negative length")
            parts.append((start, length))
        elif m.group(4):  # i-j -- inclusive end
            end = int(m.group(5))
            if end < start:
                raise FilterError(col, f"bad slice [{spec}]: the end comes before the start")
            parts.append((start, end - start + 1))
        else:
            parts.append((start, 1))

    def cut(data: bytes) -> bytes:
        out = b""
        n = len(data)
        for start, length in parts:
            s = start + n if start < 0 else start
            if s < 0 or s > n:
                return b""
            e = n if length is None else s + length
            if e > n:
                return b""  # Wireshark: a slice past the end is no value
            out += data[s:e]
        return out

    return cut


def sliced(get: Getter, cut: Callable[[bytes], bytes]) -> Getter:
    def get_slice(pkt: dict) -> list:
        out = []
        for v in get(pkt):
            b = as_bytes(v)
            if b is not None:
                piece = cut(b)
                if piece:
                    out.append(piece)
        return out

    return get_slice


def length_of(get: Getter) -> Getter:
    def get_len(pkt: dict) -> list:
        out = []
        for v in get(pkt):
            b = as_bytes(v)
            if b is not None:
                out.append(len(b))
        return out

    return get_len


def masked(get: Getter, mask_int: int | None, mask_bytes: bytes | None) -> Getter:
    def get_masked(pkt: dict) -> list:
        out = []
        for v in get(pkt):
            if type(v) is dict:
                v = v.get("value")
            t = type(v)
            if t is bool:
                v = int(v)
                t = int
            if t is int and mask_int is not None:
                out.append(v & mask_int)
            elif (t is bytes or t is bytearray) and mask_bytes is not None:
                n = min(len(v), len(mask_bytes))
                out.append(bytes(a & b for a, b in zip(v[:n], mask_bytes[:n], strict=True)))
        return out

    return get_masked


def nonzero(get: Getter) -> Callable[[dict], bool]:
    def pred(pkt: dict) -> bool:
        return any((type(v) is int and v) or (type(v) is bytes and any(v)) for v in get(pkt))

    return pred
