"""The alert: what the detector tells people, in Redis (stream) and on the PUB socket.

Schema (one map; also documented in docs/redis.md):

    id           Redis stream entry id of the alert ("1700000000000-0"); the stable alert id
    kind         "new_process_dest" | "new_process_egress" | "new_geo" | "volume_spike" | "identity_change"
    severity     "info" | "notice" | "warning" | "critical"
    ts           packet time the alert is about (float seconds since the epoch)
    entity       who: an executable path ("/usr/bin/curl") or "host:<local ip>"
    destination  the remote side: a name ("example.com") or "address:port" ("[2001:db8::1]:443")
    title        one sentence a person would say ("curl contacted a new destination: example.com")
    detail       structured facts (map): pid, exe, process, name (of the destination), label,
                 country, asn, as_org, bytes, mean, std, z, old_identity/new_identity,
                 flow {proto, src, sport, dst, dport} ...

Every string that came from the network or the host (names, paths) has its control and
invisible formatting characters replaced by ``\\xNN`` / ``\\uNNNN`` escapes before it is stored, so a
crafted SNI cannot rewrite a terminal. Nothing else is escaped.

In the stream (Keys.alerts()) an entry has the fields ``kind`` and ``alert`` (the map above as
JSON, without ``id``: the entry id is the id). On the PUB socket an alert is the two-part message
``[kind.encode(), msgpack(map with id)]``.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from services.detector import sensor_entity

KINDS = (
    "new_process_dest",
    "new_process_egress",
    "new_geo",
    "volume_spike",
    "identity_change",
    "cleartext_credential",
)
SEVERITIES = ("info", "notice", "warning", "critical")
MAX_TEXT = 512  # longest string kept in an alert (names are <= 253, paths can be long)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean_text(value: Any, limit: int = MAX_TEXT) -> str:
    """Text safe to print: control (Cc), format (Cf: bidi overrides...) and separator characters escaped."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape_char(ch) for ch in text)


def clean_value(value: Any) -> Any:
    """Recursively clean every string in a detail structure (numbers and bools untouched)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    return value


def display_name(entity: str) -> str:
    """How a title names an entity: the executable's base name, or 'host 10.0.0.5', and on a
    detector pool the sensor it was seen on ('curl on web-1')."""
    base, sensor = sensor_entity.split(entity)
    if sensor:
        return f"{display_name(base)} on {sensor}"
    if entity.startswith("host:"):
        return "host " + entity[5:]
    return entity.rstrip("/").rsplit("/", 1)[-1] or entity


def endpoint(addr: str, port: int) -> str:
    """address:port, with brackets around IPv6 addresses."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def build(
    kind: str, severity: str, ts: float, entity: str, destination: str, title: str, detail: dict
) -> dict[str, Any]:
    """An alert map without its id (the id is assigned by the stream when it is appended)."""
    return {
        "kind": kind,
        "severity": severity,
        "ts": float(ts),
        "entity": clean_text(entity),
        "destination": clean_text(destination),
        "title": clean_text(title, limit=2 * MAX_TEXT),
        "detail": clean_value(detail),
    }


def to_json(alert: dict[str, Any]) -> str:
    """The stream form: compact JSON; ensure_ascii keeps it 7-bit clean for any reader."""
    return json.dumps(alert, separators=(",", ":"), sort_keys=True)


def from_entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any] | None:
    """An alert map from a stream entry (XRANGE/XREAD row); None when the entry is not ours."""
    try:
        alert = json.loads(fields["alert"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(alert, dict):
        return None
    alert["id"] = entry_id
    return alert


def read_recent(r, stream_key: str, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` alerts, oldest first (for `pktscope alerts`)."""
    rows = r.xrevrange(stream_key, count=count)
    out = [from_entry(eid, fields) for eid, fields in reversed(rows)]
    return [a for a in out if a is not None]


def pub_message(alert: dict[str, Any]) -> list[bytes]:
    """The two-part PUB message: topic (kind) then the msgpack alert map."""
    return [alert["kind"].encode(), msgpack.packb(alert, use_bin_type=True)]
