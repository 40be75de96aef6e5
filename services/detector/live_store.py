"""The live view in Redis: connections that are open now, and the recent history of ended ones.

`pktscope inspect` (and `inspect --json`) read it; nothing in the pipeline waits on it. The
detector hands every flow event here (with what it knows of the flow: entity, process, GeoIP),
the store keeps the latest state per flow in memory and writes what changed at most every
``interval`` wall seconds, in one pipeline:

* ``P:live:conns`` (hash): connection key -> JSON, one per flow that has not ended, at most
  ``max_live`` (the least recently active are dropped beyond it, counted ``live.dropped``);
* ``P:live:history`` (sorted set): JSON of each ended outbound flow (what a program talked to)
  scored by its last packet time, at most ``max_history`` (the oldest are trimmed);
* ``P:live:meta`` (hash): ``updated`` (wall time), ``watermark`` (packet time), sizes, bounds.

A flow that starts and ends between two writes goes to the history only. Records are JSON
arrays in ``RECORD_FIELDS`` order (``as_map`` turns one back into a map). The detector deletes
``P:live:conns`` when it starts: what an earlier process left there is no longer open.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import redis
from msgpack import unpackb

from services.detector.alerts import clean_text
from services.detector.flows_skim import identity
from shared.flowevents import EV_END, FIELDS, INDEX
from shared.observe_keys import ObserveKeys

MAX_LIVE = 20_000
MAX_HISTORY = 100_000
FLUSH_INTERVAL = 0.5  # wall seconds between writes: inspect refreshes every second
# Ended flows held at most before a write, whatever the interval: the end of a replay ends most
# of its flows at once (sv-merged.pcap: 1,900 in its last 60 ms), and writing them while the
# detector still works on the last frames takes that write off the replay's end (20 ms for
# sv-merged). At most a few writes more.
FLUSH_BACKLOG = 512

_ROW_LEN = len(FIELDS)
(
    _EV,
    _FID,
    _TS,
    _PROTO,
    _SRC,
    _SPORT,
    _DST,
    _DPORT,
    _OUT,
    _FIRST,
    _LAST,
    _POUT,
    _BOUT,
    _PIN,
    _BIN,
    _STATE,
    _NAME,
    _NAME_SRC,
    _APP,
    _REASON,
) = (
    INDEX[k]
    for k in (
        "ev",
        "fid",
        "ts",
        "proto",
        "src",
        "sport",
        "dst",
        "dport",
        "outbound",
        "first",
        "last",
        "pkts_out",
        "bytes_out",
        "pkts_in",
        "bytes_in",
        "state",
        "name",
        "name_src",
        "app",
        "reason",
    )
)


def as_row(raw: Any) -> tuple | None:
    """A flow event as a wire row (tuple in FIELDS order); maps are converted; None when unusable."""
    if isinstance(raw, dict):
        raw = tuple(raw.get(f) for f in FIELDS)
    if not isinstance(raw, (tuple, list)) or len(raw) != _ROW_LEN:
        return None
    if not isinstance(raw[_SRC], str) or not isinstance(raw[_DST], str):
        return None
    return tuple(raw)


def conn_key(row: tuple) -> str:
    """Stable key of one flow: 5-tuple and first packet time (flow ids restart with the flow-tracker)."""
    return f"{row[_PROTO]}|{row[_SRC]}|{row[_SPORT]}|{row[_DST]}|{row[_DPORT]}|{row[_FIRST]!r}"


def _num(value: Any) -> int:
    return value if type(value) is int else 0


def process_facts(proc: Any) -> dict[str, Any]:
    """The process fields of a flow (what attribution found), for the live view and EVE."""
    if proc is None:
        return {}
    if isinstance(proc, dict):  # already in this form (forwarded by the detector)
        return proc
    out: dict[str, Any] = {}
    for attr, field in (
        ("pid", "pid"),
        ("exe", "exe"),
        ("name", "name"),
        ("username", "user"),
        ("cmdline", "cmdline"),
        ("container", "container"),
    ):
        value = getattr(proc, attr, None)
        if value not in (None, ""):
            out[field] = value
    return out


# A record is stored as a JSON array in this order (arrays encode in half the time of maps:
# 0.28 -> 0.13 CPU s for sv-merged.pcap's flows); readers turn it back into a map with as_map().
RECORD_FIELDS = (
    "key", "fid", "dir", "proto", "src", "sport", "dst", "dport", "name", "first", "last",
    "bytes_out", "bytes_in", "pkts_out", "pkts_in", "state", "ended", "reason",
    "entity", "label", "country", "asn", "as_org", "process",
)  # fmt: skip


# json.dumps with separators makes a new JSONEncoder per call; one made once writes the same text
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def as_map(record: Any) -> dict[str, Any] | None:
    """A stored record (JSON array, RECORD_FIELDS order) as a map; None when it is not one."""
    if isinstance(record, list) and len(record) == len(RECORD_FIELDS):
        return dict(zip(RECORD_FIELDS, record, strict=True))
    return None


def record(row: tuple, flow: Any, label_of) -> list[Any]:
    """The stored view of one flow from its latest event and the detector's state of it."""
    name = row[_NAME] or ""
    if name and not name.isprintable():
        name = clean_text(name, 253)
    ended = row[_EV] == EV_END
    if flow is not None:
        proc = flow.proc
        facts = None
        if proc is not None:
            facts = {k: clean_text(v) if isinstance(v, str) else v for k, v in process_facts(proc).items()}
        entity, org = flow.entity, flow.org
        label = org or label_of(name) or row[_DST]
        cc, asn = flow.cc, flow.asn
        direction = "out"
    else:
        facts, org, cc, asn = None, "", "", 0
        outbound = row[_OUT] is True
        entity = "host:" + (row[_SRC] if outbound else row[_DST])
        label = label_of(name) or (row[_DST] if outbound else row[_SRC])
        direction = "out" if outbound else "in"
    return [
        conn_key(row), row[_FID], direction, row[_PROTO], row[_SRC], row[_SPORT], row[_DST], row[_DPORT],
        name, row[_FIRST], row[_LAST], _num(row[_BOUT]), _num(row[_BIN]), _num(row[_POUT]), _num(row[_PIN]),
        row[_STATE] or "", ended, (row[_REASON] or "") if ended else "",
        clean_text(entity) if not entity.isprintable() else entity,
        clean_text(label, 253), cc or "", asn or 0, clean_text(org) if org else "", facts,
    ]  # fmt: skip


class LiveStore:
    """The detector's side of the live view (see the module docstring)."""

    def __init__(
        self,
        r: redis.Redis,
        keys: ObserveKeys,
        label_of,
        counters: Counter[str] | None = None,
        max_live: int = MAX_LIVE,
        max_history: int = MAX_HISTORY,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.r = r
        self.keys = keys
        self.c: Counter[str] = counters if counters is not None else Counter()
        self.max_live = max_live
        self.max_history = max_history
        self.interval = interval
        self._label_cache: dict[str, str] = {}
        self._label_of = label_of
        # identity (flows_skim.identity) -> (row, flow) of open flows, least recently active first
        self.live: dict[bytes, tuple[Any, Any]] = {}
        self.dirty: set[bytes] = set()
        # keys present in P:live:conns -> their text there (a float's repr is costly: kept, not
        # made again when the flow leaves)
        self.written: dict[bytes, str] = {}
        self.ended: list[tuple[tuple, Any]] = []  # outbound flows ended since the last write
        self.removed: list[str] = []  # texts of keys to delete from P:live:conns
        self.watermark = 0.0
        self._next = 0.0

    def reset(self) -> None:
        """A new detector process: whatever an earlier one left as open is not ours to show."""
        self.r.delete(self.keys.live_conns())

    def label(self, name: str) -> str:
        if not name:
            return ""
        cached = self._label_cache.get(name)
        if cached is None:
            try:
                cached = self._label_of(name) or name
            except Exception:
                cached = name
            if len(self._label_cache) > 50_000:
                self._label_cache.clear()
            self._label_cache[name] = cached
        return cached

    def observe(self, raw: Any, flow: Any) -> None:
        """Take one flow event (a row, or an event map)."""
        row = raw if type(raw) is tuple and len(raw) == _ROW_LEN else as_row(raw)
        if row is None:
            return
        self.take(identity(row), row[_EV], row[_TS], row, flow)

    def take(self, key: bytes, ev: Any, ts: Any, row: Any, flow: Any) -> None:
        """One event of the flow ``key`` (flows_skim.identity). ``row`` is its row, or, for an
        inbound flow, the row still packed (flows_skim.live_rows), unpacked only if it is written.

        The observer calls this for every event (160k on the 5x bench capture), so it does no
        more than it must: a plain dict in recency order, not an OrderedDict (a flow seen again
        is popped and put back at the end)."""
        if type(ts) is float and ts > self.watermark:
            self.watermark = ts
        live = self.live
        if ev == EV_END:
            if live.pop(key, None) is not None:
                self.dirty.discard(key)
                text = self.written.pop(key, None)
                if text is not None:
                    self.removed.append(text)
            # the history answers "what did this program talk to": outbound flows only
            if type(row) is tuple and row[_OUT] is True:
                ended = self.ended
                ended.append((row, flow))
                if len(ended) > self.max_history:
                    del ended[: len(ended) - self.max_history]
            return
        if live.pop(key, None) is None and len(live) >= self.max_live:
            old = next(iter(live))  # the least recently active
            del live[old]
            self.dirty.discard(old)
            self.c["live.dropped"] += 1
            text = self.written.pop(old, None)
            if text is not None:
                self.removed.append(text)
        live[key] = (row, flow)
        self.dirty.add(key)

    def maybe_flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.interval
            self.flush()
        elif len(self.ended) >= FLUSH_BACKLOG:
            self.flush(open_flows=False)

    def flush(self, open_flows: bool = True) -> None:
        """Write what changed since the last write; a Redis error is counted, the state kept.

        ``open_flows=False``: only the ended flows (into the history, out of the open ones); the
        open flows that changed wait for the next full write (they change again meanwhile)."""
        keys = self.keys
        label = self.label
        pipe = self.r.pipeline(transaction=False)
        texts: dict[bytes, str] = {}
        if self.dirty and open_flows:
            live = self.live
            mapping = {}
            for key in self.dirty:
                row, flow = live[key]
                if type(row) is bytes:  # an inbound flow's row as it came (flows_skim.live_rows)
                    row = as_row(unpackb(row, raw=False, use_list=False, strict_map_key=False))
                    if row is None:
                        continue
                rec = record(row, flow, label)
                texts[key] = rec[0]
                mapping[rec[0]] = _to_json(rec)
            pipe.hset(keys.live_conns(), mapping=mapping)
        if self.removed:
            pipe.hdel(keys.live_conns(), *self.removed)
        if self.ended:
            history = {
                _to_json(record(row, flow, label)): float(row[_LAST] or row[_TS])
                for row, flow in self.ended
            }
            pipe.zadd(keys.live_history(), history)
            pipe.zremrangebyrank(keys.live_history(), 0, -self.max_history - 1)
        pipe.hset(
            keys.live_meta(),
            mapping={
                "updated": time.time(),
                "watermark": self.watermark,
                "live": len(self.live),
                "max_live": self.max_live,
                "max_history": self.max_history,
            },
        )
        try:
            pipe.execute()
        except redis.RedisError:
            self.c["live.redis_errors"] += 1
            return
        self.c["live.flows_ended"] += len(self.ended)
        if open_flows:
            self.written.update(texts)
            self.dirty.clear()
        self.removed.clear()
        self.ended.clear()

