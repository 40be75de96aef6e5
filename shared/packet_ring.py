"""The Redis side of the per-flow packet ring (services/decoder/ring.py): keys, requests, loading.

Shared because three processes meet here: the detector asks (``request``), the decoder holding
the flow answers (``ring_key``), and `pktscope alerts pcap` reads (``load``).
"""

from __future__ import annotations

from typing import Any

import msgpack

RING_TTL = 7 * 86400  # seconds a saved alert's packets stay in Redis
REQUESTS_MAXLEN = 10_000


def requests_key(prefix: str) -> str:
    return f"{prefix}:ring:requests"


def ring_key(prefix: str, alert_id: str) -> str:
    return f"{prefix}:ring:{alert_id}"


def request(r: Any, prefix: str, alert_id: str, flow: dict) -> None:
    """Ask the decoders for the packets of ``flow`` ({proto, src, sport, dst, dport}) for an alert."""
    spec = f"{flow['proto']}|{flow['src']}|{flow['sport']}|{flow['dst']}|{flow['dport']}"
    r.xadd(requests_key(prefix), {"alert": alert_id, "flow": spec}, maxlen=REQUESTS_MAXLEN, approximate=True)


def load(r: Any, prefix: str, alert_id: str) -> list[tuple[float, int, int, bytes]]:
    """The saved packets of an alert's flow, oldest first."""
    out = []
    for raw in r.lrange(ring_key(prefix, alert_id), 0, -1):
        ts, linktype, wirelen, data = msgpack.unpackb(raw, raw=False)
        out.append((float(ts), int(linktype), int(wirelen), bytes(data)))
    return out
