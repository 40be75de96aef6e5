"""What `pktscope inspect` shows, read from Redis: one snapshot, breakdowns, history, ack, allow.

Only reads what the pipeline already keeps (docs/redis.md): the services' stats hashes, the live
view (``P:live:conns``, ``P:live:history``, written by the detector), the alert stream; writes
only the inspector's acks (``P:inspect:acked``) and, for "allow", the baseline (as `pktscope
baseline allow` does). Nothing here can slow the pipeline down: every read is bounded.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import redis

from services.cli import pipeline_stats
from services.cli.filter import FilterError, compile_filter
from services.detector.alerts import display_name
from services.detector.baseline_store import BaselineStore
from services.detector.keys import DetectorKeys
from services.detector.live_store import as_map
from shared.observe_keys import ObserveKeys

MAX_ALERTS = 500  # newest alerts shown
MAX_ACKED = 100_000  # acks kept (oldest dropped)
MAX_HISTORY_ROWS = 100_000  # ended flows read for one history query


class InspectError(Exception):
    """Something the person asked for cannot be done; the message says why."""


def conn_fields(conn: dict[str, Any]) -> dict[str, Any]:
    """The display-filter view of a connection (docs/filters.md, "inspect"): Wireshark's names
    where they apply (ip.addr, tcp.port, ...), and process.*, dest.*, flow.* for the rest."""
    family = "ipv6" if ":" in str(conn.get("src", "")) else "ip"
    out: dict[str, Any] = {family: {"src": conn.get("src"), "dst": conn.get("dst")}}
    l4 = {6: "tcp", 17: "udp"}.get(conn.get("proto"))
    if l4:
        out[l4] = {"srcport": conn.get("sport"), "dstport": conn.get("dport")}
    proc = conn.get("process") or {}
    out["process"] = {
        "name": proc.get("name") or display_name(str(conn.get("entity", ""))),
        "exe": proc.get("exe", ""),
        "pid": proc.get("pid", 0),
        "user": proc.get("user", ""),
        "container": proc.get("container", ""),
        "entity": conn.get("entity", ""),
    }
    out["dest"] = {
        "name": conn.get("name", ""),
        "label": conn.get("label", ""),
        "country": conn.get("country", ""),
        "asn": conn.get("asn", 0),
        "as_org": conn.get("as_org", ""),
    }
    out["flow"] = {
        "bytes_out": conn.get("bytes_out", 0),
        "bytes_in": conn.get("bytes_in", 0),
        "state": conn.get("state", ""),
        "dir": conn.get("dir", ""),
        "proto": conn.get("proto", 0),
    }
    return out


def alert_fields(alert: dict[str, Any]) -> dict[str, Any]:
    """The display-filter view of an alert: alert.kind/severity/entity/title plus its flow's fields."""
    detail = alert.get("detail") or {}
    flow = detail.get("flow") or {}
    conn = {
        "src": flow.get("src", ""),
        "dst": flow.get("dst", ""),
        "sport": flow.get("sport", 0),
        "dport": flow.get("dport", 0),
        "proto": flow.get("proto", 0),
        "entity": alert.get("entity", ""),
        "name": detail.get("name", ""),
        "label": detail.get("label", ""),
        "country": detail.get("country", ""),
        "asn": detail.get("asn", 0),
        "process": {
            "name": detail.get("process", ""),
            "exe": detail.get("exe", ""),
            "pid": detail.get("pid", 0),
        },
    }
    out = conn_fields(conn)
    out["alert"] = {k: alert.get(k, "") for k in ("kind", "severity", "entity", "title", "destination", "id")}
    return out


def make_filter(text: str):
    """A predicate over conn_fields/alert_fields dicts; InspectError with the parser's message."""
    try:
        # not strict: connections and alerts have fields of their own (process.*, dest.*,
        # alert.*, docs/filters.md "In pktscope inspect") beside Wireshark's names
        return compile_filter(text, strict=False)
    except FilterError as exc:
        raise InspectError(str(exc)) from None


class InspectSource:
    """One pipeline's Redis, as the inspector sees it."""

    def __init__(self, r: redis.Redis, prefix: str, run_id: str | None = None) -> None:
        self.r = r
        self.keys = ObserveKeys(prefix)
        self.run_id = run_id
        self.baseline = BaselineStore(r, DetectorKeys(prefix))

    # --- reading ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        stats = pipeline_stats.read_all(self.r, self.keys, self.run_id)
        now = time.time()
        services = {}
        for name, s in stats.items():
            age = now - float(s.get("heartbeat", 0) or 0)
            state = "finished" if s.get("eos") else "up" if age <= 5.0 else "down"
            services[name] = {
                "state": state,
                "heartbeat_age": round(age, 1),
                "restarts": s.get("restarts", 0),
            }
        dets = [s for name, s in stats.items() if name.split("-", 1)[0] == "detector"]  # shards too
        meta = self.r.hgetall(self.keys.live_meta())
        return {
            "services": services,
            "learning": any(int(d.get("learning", 0) or 0) for d in dets) if dets else None,
            "alerts": sum(int(d.get("alerts", 0) or 0) for d in dets),
            "live_updated": float(meta.get("updated", 0) or 0),
            "watermark": float(meta.get("watermark", 0) or 0),
        }

    def connections(self) -> list[dict[str, Any]]:
        """Open connections, most recently active first."""
        out = []
        for text in self.r.hvals(self.keys.live_conns()):
            conn = _record(text)
            if conn is not None:
                out.append(conn)
        out.sort(key=lambda c: float(c.get("last") or 0), reverse=True)
        return out

    def alerts(self, count: int = MAX_ALERTS) -> list[dict[str, Any]]:
        """Newest first, each with ``seen`` (acknowledged in the inspector)."""
        rows = self.r.xrevrange(self.keys.alerts(), count=count)
        out = []
        for entry_id, fields in rows:
            try:
                alert = json.loads(fields.get("alert", ""))
            except ValueError:
                continue
            if isinstance(alert, dict):
                alert["id"] = entry_id
                out.append(alert)
        if out:
            pipe = self.r.pipeline(transaction=False)
            for alert in out:
                pipe.zscore(self.keys.acked(), alert["id"])
            for alert, score in zip(out, pipe.execute(), strict=True):
                alert["seen"] = score is not None
        return out

    def history(self, entity: str, start: float, end: float) -> list[dict[str, Any]]:
        """What ``entity`` (an executable path, a program name, or host:ADDR) talked to between
        ``start`` and ``end`` (packet time): one row per destination, with flows and bytes."""
        rows = self.r.zrangebyscore(self.keys.live_history(), start, end, start=0, num=MAX_HISTORY_ROWS)
        conns = [c for c in map(_record, rows) if c is not None]
        conns += [c for c in self.connections() if float(c.get("first") or 0) <= end]
        per: dict[str, dict[str, Any]] = {}
        for c in conns:
            ent = str(c.get("entity", ""))
            if entity not in (ent, display_name(ent)):
                continue
            dest = c.get("name") or c.get("label") or c.get("dst", "")
            row = per.setdefault(
                dest,
                {
                    "destination": dest,
                    "label": c.get("label", ""),
                    "flows": 0,
                    "bytes_out": 0,
                    "bytes_in": 0,
                    "first": float(c.get("first") or 0),
                    "last": 0.0,
                    "ports": set(),
                },
            )
            row["flows"] += 1
            row["bytes_out"] += int(c.get("bytes_out") or 0)
            row["bytes_in"] += int(c.get("bytes_in") or 0)
            row["first"] = min(row["first"], float(c.get("first") or 0))
            row["last"] = max(row["last"], float(c.get("last") or 0))
            row["ports"].add(int(c.get("dport") or 0))
        out = sorted(per.values(), key=lambda r: r["last"], reverse=True)
        for row in out:
            row["ports"] = sorted(row["ports"])
        return out

    def snapshot(self, count: int = 100) -> dict[str, Any]:
        """`inspect --json`: status, open connections, newest alerts."""
        return {
            "status": self.status(),
            "connections": self.connections(),
            "alerts": self.alerts(count),
        }

    # --- acting -----------------------------------------------------------------------------------
    def ack(self, alert_ids: list[str]) -> None:
        """Mark alerts seen (kept in a bounded sorted set, oldest acks dropped first)."""
        if not alert_ids:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.keys.acked(), {i: time.time() for i in alert_ids})
        pipe.zremrangebyrank(self.keys.acked(), 0, -MAX_ACKED - 1)
        pipe.execute()

    def allow(self, alert: dict[str, Any]) -> str:
        """Put what the alert is about into the entity's baseline, as `baseline allow` would;
        returns what was allowed (for the status line). Also acknowledges the alert."""
        entity = alert.get("entity") or ""
        detail = alert.get("detail") or {}
        kind = alert.get("kind")
        if not entity:
            raise InspectError("the alert names no entity")
        if kind == "identity_change" and detail.get("new_identity"):
            self.baseline.allow(entity, identity=str(detail["new_identity"]))
            what = f"identity {str(detail['new_identity'])[:12]}..."
        elif kind == "new_geo" and detail.get("new") == "asn" and detail.get("asn"):
            self.baseline.allow(entity, asn=int(detail["asn"]))
            what = f"AS{detail['asn']}"
        elif kind == "new_geo" and detail.get("country"):
            self.baseline.allow(entity, country=str(detail["country"]))
            what = f"country {detail['country']}"
        elif kind in ("new_process_dest", "new_process_egress"):
            label = detail.get("label") or detail.get("as_org") or _domain(detail.get("name", ""))
            label = label or (detail.get("flow") or {}).get("dst", "")
            if not label:
                raise InspectError("the alert names no destination to allow")
            self.baseline.allow(entity, label=str(label))
            what = f"destination {label}"
        else:
            raise InspectError(f"nothing to allow for a {kind} alert (acknowledge it instead)")
        self.ack([alert["id"]])
        return f"allowed {what} for {display_name(entity)}"


def _record(text: str) -> dict[str, Any] | None:
    """A live-view record (a JSON array, services/detector/live_store.RECORD_FIELDS) as a map."""
    try:
        return as_map(json.loads(text))
    except ValueError:
        return None


def _domain(name: str) -> str:
    if not name:
        return ""
    try:
        from services.detector.enrich.domains import registrable_domain

        return registrable_domain(name) or name
    except Exception:
        return name


def breakdown(conns: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Per process (``by="process"``) or per destination label (``by="destination"``): flows, bytes."""
    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"flows": 0, "bytes_out": 0, "bytes_in": 0, "peers": set()}
    )
    for c in conns:
        if by == "process":
            key = str(c.get("entity", ""))
            peer = c.get("label") or c.get("dst")
        else:
            key = str(c.get("label") or c.get("dst", ""))
            peer = c.get("entity", "")
        g = groups[key]
        g["flows"] += 1
        g["bytes_out"] += int(c.get("bytes_out") or 0)
        g["bytes_in"] += int(c.get("bytes_in") or 0)
        g["peers"].add(str(peer))
    out = [
        {
            "key": k,
            "flows": g["flows"],
            "bytes_out": g["bytes_out"],
            "bytes_in": g["bytes_in"],
            "peers": len(g["peers"]),
        }
        for k, g in groups.items()
    ]
    out.sort(key=lambda r: (r["bytes_out"] + r["bytes_in"], r["flows"]), reverse=True)
    return out
