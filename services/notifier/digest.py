"""Grouping alerts into digests per entity and window, and the rate limit per URL.

Pure logic with the clock passed in (tests drive it); the service does the I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from services.detector.alerts import display_name
from services.notifier.targets import SEVERITIES

SHOWN = 4  # items named in a digest line before "…"
MAX_IDS_LISTED = 50  # alert ids named in one notification body ("+N more" after that)


@dataclass
class Digest:
    entity: str
    opened: float  # when its first alert arrived (its window starts)
    alerts: list[tuple[str, dict]] = field(default_factory=list)  # (alert id, alert)

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.alerts]

    @property
    def severity(self) -> str:
        ranks = [
            SEVERITIES.index(a.get("severity")) for _, a in self.alerts if a.get("severity") in SEVERITIES
        ]
        return SEVERITIES[max(ranks)] if ranks else "notice"


def _items(values: list[str]) -> str:
    uniq = list(OrderedDict.fromkeys(v for v in values if v))
    shown = ", ".join(uniq[:SHOWN])
    return shown + (", …" if len(uniq) > SHOWN else "")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def entity_line(entity: str, alerts: list[dict]) -> str:
    """One line about one entity's alerts: "curl: 5 new destinations: a.com, b.net, …"."""
    who = display_name(entity)
    if len(alerts) == 1:
        return str(alerts[0].get("title") or f"{who}: {alerts[0].get('kind')}")
    parts = []
    by_kind: dict[str, list[dict]] = OrderedDict()
    for a in alerts:
        by_kind.setdefault(str(a.get("kind")), []).append(a)
    for kind, group in by_kind.items():
        if kind == "new_process_dest":
            labels = [str((a.get("detail") or {}).get("label") or a.get("destination", "")) for a in group]
            parts.append(f"{_plural(len(group), 'new destination', 'new destinations')}: {_items(labels)}")
        elif kind == "new_geo":
            items = []
            for a in group:
                d = a.get("detail") or {}
                items.append(f"AS{d.get('asn')}" if d.get("new") == "asn" else str(d.get("country", "")))
            parts.append(
                f"{_plural(len(group), 'new country/network', 'new countries/networks')}: {_items(items)}"
            )
        elif kind == "new_process_egress":
            parts.append(f"first outbound connection (to {group[0].get('destination', '')})")
        else:
            parts.append("; ".join(str(a.get("title", kind)) for a in group))
    return f"{who}: " + "; ".join(parts)


def render(digests: list[Digest]) -> tuple[str, str, str]:
    """(title, body, severity) of one notification covering ``digests``."""
    alerts = [a for d in digests for _, a in d.alerts]
    ids = [i for d in digests for i in d.ids]
    severity = SEVERITIES[max(SEVERITIES.index(d.severity) for d in digests)]
    if len(digests) == 1:
        d = digests[0]
        line = entity_line(d.entity, [a for _, a in d.alerts])
        title = (
            f"pktscope: {line}"
            if len(line) <= 120
            else f"pktscope: {display_name(d.entity)}: {len(alerts)} alerts"
        )
        lines = [line]
    else:
        names = _items([display_name(d.entity) for d in digests])
        title = f"pktscope: {len(alerts)} alerts from {len(digests)} programs/hosts ({names})"
        lines = [entity_line(d.entity, [a for _, a in d.alerts]) for d in digests]
    listed = ", ".join(ids[:MAX_IDS_LISTED]) + (
        f" (+{len(ids) - MAX_IDS_LISTED} more)" if len(ids) > MAX_IDS_LISTED else ""
    )
    lines.append(f"alert ids: {listed}")
    lines.append("see them with: pktscope alerts list")
    return title, "\n".join(lines), severity


class Grouper:
    """Open digests per entity; a digest is due when its window has passed (or at once with 0)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.open: OrderedDict[str, Digest] = OrderedDict()

    def add(self, alert_id: str, alert: dict, now: float) -> None:
        entity = str(alert.get("entity", ""))
        digest = self.open.get(entity)
        if digest is None:
            digest = self.open[entity] = Digest(entity, now)
        if alert_id not in digest.ids:
            digest.alerts.append((alert_id, alert))

    def due(self, now: float, everything: bool = False) -> list[Digest]:
        out = [d for d in self.open.values() if everything or now >= d.opened + self.window]
        for d in out:
            del self.open[d.entity]
        return out

    def pending_ids(self) -> int:
        return sum(len(d.alerts) for d in self.open.values())


class RateLimit:
    """Token bucket: ``count`` notifications per ``period`` seconds."""

    def __init__(self, count: int, period: float, now: float) -> None:
        self.count = count
        self.rate = count / period
        self.tokens = float(count)
        self.stamp = now

    def _fill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.count), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def available(self, now: float) -> bool:
        self._fill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> None:
        self._fill(now)
        self.tokens -= 1.0
