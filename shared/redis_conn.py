"""Opening Redis the same way everywhere (redis-py with hiredis, unix socket or TCP URL)."""

from __future__ import annotations

import redis


def connect(url: str, **kw) -> redis.Redis:
    """Connect to ``unix:///path/redis.sock`` or ``redis://host:port/db``; responses decoded as text."""
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, **kw)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
