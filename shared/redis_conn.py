"""Opening Redis the same way everywhere (redis-py with hiredis, unix socket or TCP URL)."""

from __future__ import annotations

import redis


def connect(url: str, **kw) -> redis.Redis:
    """Connect to ``unix:///path/redis.sock`` or ``redis://host:port/db``; responses decoded as text."""
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, **kw)
