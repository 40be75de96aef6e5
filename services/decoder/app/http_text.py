"""Text helpers shared by the HTTP/1 and HTTP/2 decoders: safe decoding and host normalisation."""

from __future__ import annotations

_CONTROL_ESCAPE = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f"}
_PLAIN = bytes(range(0x20, 0x7F))
MAX_VALUE = 2048  # characters kept of a URI or header value


def text(raw: bytes) -> str:
    """Bytes from the wire as printable text: UTF-8 where valid, other bytes and controls escaped."""
    raw = bytes(raw[:MAX_VALUE])
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPE)


def normalise_host(host: str) -> str:
    """Lower-case, without port, userinfo or trailing dot; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    at = host.rfind("@")
    if at >= 0:
        host = host[at + 1 :]
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    return host


def authority_of(target: str) -> str:
    """The authority of an absolute-URI request target ("http://h:1/x") or of "host:port"; else ""."""
    sep = target.find("://")
    if sep > 0:
        rest = target[sep + 3 :]
        for stop in "/?#":
            cut = rest.find(stop)
            if cut >= 0:
                rest = rest[:cut]
        return rest
    if target and target[0] != "/" and target != "*":
        return target.split("/", 1)[0]
    return ""
