"""Safe printing of attacker-controlled text.

Names in packets (server names, hosts, URIs, DNS names) can carry escape sequences that would
repaint or retitle a terminal, or bidi overrides that reorder what is shown. Everything printed
goes through ``safe`` (human output) or ``json_line`` (JSON output) first.
"""

from __future__ import annotations

import json
import re

# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates,
# zero-width characters, BOM, and lone surrogates (from undecodable input). Backslashes are left
# alone: the decoders already write undecodable bytes as \\xNN, and a backslash is harmless.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
# Inside JSON text: C0 controls, quotes and backslashes are already escaped by json.dumps.
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def _escape_char(m: re.Match) -> str:
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by "surrogateescape"
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object) -> str:
    """Printable text for one value: bytes as UTF-8 with invalid bytes as \\xNN, controls escaped."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape_char, text)


def jsonable(value: object, depth: int = 0) -> object:
    """A copy of ``value`` that json.dumps accepts: bytes become hex text, other types strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return str(value)  # NaN and infinities are not JSON
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if depth > 32:
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if not isinstance(k, str) else k: jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    return safe(value)


def _default(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset)):
        return list(value)
    return safe(value)


def json_line(obj: object) -> str:
    """One line of valid JSON for any input, with nothing a terminal would act on left raw."""
    try:  # the common case, all in C: plain dicts/lists/str/numbers, bytes through _default
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)
    except (TypeError, ValueError, RecursionError):  # NaN/inf, odd keys, very deep nesting
        text = json.dumps(jsonable(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
