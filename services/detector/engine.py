"""The detection engine: flow events in, alerts out, baseline in Redis.

One ``process(events)`` call handles one FLOWS frame with one Redis round trip: every check is
queued on a pipeline as a Lua script call (see lua.py), the pipeline runs once, and the scripts'
answers say which alerts were raised (already appended to the alert stream by the script).

Which event triggers what (outbound flows only; inbound flows are ignored):

* first event of a flow (normally "start"; any event of a flow this process has not seen,
  e.g. after a restart): the entity's first-ever egress, its binary identity, and the country
  and AS of the destination are checked;
* the destination label (AS organisation, else registrable domain, else IP) is checked as soon
  as it is final: at once when the AS organisation is known or the event already carries a name
  (DNS name, SNI on a start); otherwise the flow waits up to ``name_wait`` seconds of packet time
  for an event with a name (a TLS SNI usually arrives with the first update), or its end, and
  is then labelled by whatever is known;
* every event's ``d_bytes_out`` is added to the entity's volume interval.

Packet time (event ts, and TICK watermarks) drives the learning window, cooldowns, name waits
and volume intervals, so replaying a capture gives the same alerts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.exceptions import ResponseError

from services.detector import alerts, connections, lua, script_batch, sensor_entity
from services.detector.connections import ConnectionHistory
from services.detector.enrichment import Enrichers
from services.detector.events import FlowEvent, scan
from services.detector.keys import SET_ASN, SET_COUNTRY, SET_CRED, SET_DEST, DetectorKeys
from shared.config import PipelineConfig
from shared.flowevents import EV_END
from shared.redis_batch import run_batch
from shared.redis_conn import UNAVAILABLE, evalsha, is_cluster, recover

log = logging.getLogger(__name__)

DISPATCH = "dispatch"  # the script that runs a frame's script calls as one (plain Redis)
DISPATCH_MAX_CALLS = 500  # script calls per dispatcher run (~6 ms of Redis at ~12 µs a call)
NAME_WAIT = 5.0  # packet-time seconds an unnamed flow waits for its SNI/Host before IP labelling
MAX_FLOWS = 200_000  # flows remembered (LRU); a forgotten flow is treated as new when seen again
MAX_OPEN_INTERVALS = 100_000  # entities whose open volume interval this process will close by time
SET_CAP = 10_000  # members per entity set (labels, countries, ASes) and cooldown entries
MAX_ENTITIES = 100_000  # entities kept in Redis; the least recently seen are forgotten beyond it
TOUCH_EVERY = 5.0  # packet seconds between two last_seen writes for one entity
KNOWN_CAP = 200_000  # facts this process knows are in the baseline (skips their Redis check)
# Later events of a host-attributed flow that ask the attributor again. Its scans are rate
# limited, so in a burst of new flows most first lookups are deferred (199 of 200 in
# scripts/bench_enrichment.py); the next event finds the socket in the scan made since.
ATTRIBUTION_RETRIES = 3
IDENTITY_PLACEHOLDER_OLD, IDENTITY_PLACEHOLDER_TITLE = "\u0001", "\u0002"
# ProcessInfo attribute -> alert detail field ("name" is taken by the destination's name)
_PROC_FACTS = (
    ("pid", "pid"),
    ("exe", "exe"),
    ("name", "process"),
    ("cmdline", "cmdline"),
    ("username", "username"),
    ("parent_exe", "parent_exe"),
    ("exe_deleted", "exe_deleted"),
    ("ppid", "ppid"),
    ("argv", "argv"),
    ("cgroup", "cgroup"),
    ("container_id", "container_id"),
    ("source", "attribution"),
)
VOL_FACTS, VOL_TITLE, VOL_SEVERITY, VOL_TS = "\u0001", "\u0002", "\u0003", "\u0004"


class FlowState:
    """What the engine remembers about one flow between its events."""

    __slots__ = ("entity", "who", "started", "labelled", "proc", "cc", "asn", "org", "retries", "label")

    def __init__(self, entity: str, started: float, proc: Any | None) -> None:
        self.entity = entity
        self.who = alerts.display_name(entity)
        self.started = started
        self.labelled = False
        self.proc = proc
        self.cc, self.asn, self.org = "", 0, ""
        self.retries = 0  # later events that asked the attributor again
        self.label = ""  # the destination label, once final (connection history)


class _Batch:
    """Commands queued for one round trip: checks (scripts answering {status, id, alert}) first,
    then plain commands (bookkeeping whose answers are only checked for errors)."""

    __slots__ = ("checks", "plain", "remember")

    def __init__(self) -> None:
        self.checks: list[tuple[str, tuple, dict]] = []
        self.plain: list[tuple[str, tuple, dict]] = []
        self.remember: list[tuple | None] = []  # per check: a fact to cache when found known

    def script(self, name: str, keys: list[str], args: list[Any], remember: tuple | None = None) -> None:
        self.checks.append((name, (keys, args), {}))
        self.remember.append(remember)

    def command(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Queue any redis-py pipeline method call, e.g. ``command("hset", key, field, value)``."""
        self.plain.append((name, args, kwargs))


class DetectorEngine:
    """Flow events -> alerts. Not thread-safe; one per process (several may share a Redis)."""

    def __init__(
        self,
        r: redis.Redis,
        cfg: PipelineConfig,
        keys: DetectorKeys | None = None,
        enrichers: Enrichers | None = None,
        counters: Counter[str] | None = None,
        append_in_script: bool = True,
        name_wait: float = NAME_WAIT,
        max_flows: int = MAX_FLOWS,
        stop: Callable[[], bool] = lambda: False,
        batch_scripts: bool = True,
    ) -> None:
        self.r = r
        self.det = cfg.detector
        self.run_id = cfg.run_id or f"pid{os.getpid()}"  # tells this run's volume adds from a replay's
        self.keys = keys or DetectorKeys(cfg.redis_prefix)
        self.enr = enrichers or Enrichers()
        self.c: Counter[str] = counters if counters is not None else Counter()
        # a Cluster keeps the stream in its own slot: a decision script cannot append there
        self.cluster = is_cluster(r)
        self._plain = not self.cluster and isinstance(r, redis.Redis)  # run_batch can serve it
        self.append_in_script = append_in_script and not self.cluster
        self.name_wait = name_wait
        self.max_flows = max_flows
        self.stop = stop
        self.redis_errors = 0
        # When a list (services/detector/observers.py is on): every outbound flow's event of a frame
        # is appended as (row, FlowState), for the facts only the detector knows of those flows
        # (the observer gets the frame itself: inbound flows' events need nothing more).
        self.observed: list[tuple[Any, FlowState]] | None = None
        self.flows: OrderedDict[tuple, FlowState] = OrderedDict()
        # a detector pool: the sensor the events being processed come from (sensor_entity.py)
        self.sensor = ""
        # Facts already in the baseline, so most flows need no Redis check at all. Cleared by
        # maintenance() every few seconds so that a `baseline reset` is noticed.
        self.known: set[tuple] = set()
        self._last_touch: dict[str, float] = {}  # entity -> ts of its last last_seen write
        self._volume_args: dict[str, tuple[list[str], str, str]] = {}  # entity -> keys, template, title
        self.pending: deque[tuple[float, tuple]] = deque()
        self.open_intervals: dict[str, float] = {}
        self.watermark = 0.0
        self.learning_start: float | None = None
        self.learning_end: float | None = None
        self._sha: dict[str, str] = {}
        self.history = ConnectionHistory(self.keys.prefix)  # `pktscope connections`
        self._scripts = {
            "novel": lua.CHECK_NOVEL,
            "identity": lua.CHECK_IDENTITY,
            "volume": lua.VOLUME,
            "touch": lua.TOUCH,
            "append_once": lua.APPEND_ONCE,
            "conn_pair": connections.PAIR,
        }
        # a frame's script calls as one (services/detector/script_batch.py); plain Redis only
        self._dispatch = self._plain and batch_scripts
        if self._dispatch:
            self._scripts[DISPATCH] = script_batch.dispatcher_source(self._scripts)
        self._run_with_retry(self._load_state)

    # --- public ------------------------------------------------------------------------------
    def process(
        self,
        raw_events: Iterable[Any],
        extra: Callable[[_Batch], None] | None = None,
        scanned: tuple[list, int, int, int] | None = None,
    ) -> list[dict]:
        """Handle one frame's events; return the alerts raised (with ids), in order.

        ``scanned``: what events.scan gives for them with this engine's watermark, when the
        caller read the frame in place (services/detector/flows_skim.py); ``raw_events`` is
        then not looked at."""
        batch = _Batch()
        volume: dict[tuple[str, float], list] = {}  # (entity, interval start) -> [bytes, latest ts]
        touched: dict[str, float] = {}
        interval = self.det.volume_interval
        pending = self.pending
        counters = self.c
        observed = self.observed
        # inbound flows' events come as the packet times that move the clock (events.scan)
        items, taken, late, bad = scan(raw_events, self.watermark) if scanned is None else scanned
        counters["late_events"] += late
        counters["bad_events"] += bad
        for item in items:
            if type(item) is float:  # the highest time of a run of inbound flows' events
                if item > self.watermark:
                    self.watermark = item
                if pending and pending[0][0] < item:
                    self._expire_pending(batch, final=False, before=item)
                continue
            ev, raw = item
            ts = ev.ts
            if ts < self.watermark:
                # behind what this detector has already handled: the flow-tracker sends events
                # in packet-time order, so only a restart upstream (or a capture whose own
                # timestamps go backwards) gets here; counted, and handled at its own time
                counters["late_events"] += 1
            else:
                self.watermark = ts
            if pending and pending[0][0] < ts:
                self._expire_pending(batch, final=False, before=ts)
            if not ev.outbound:
                continue  # (the observer gets the whole frame; ``observed`` is for outbound flows' facts)
            if self.learning_end is None:
                self._start_learning(ev.ts)
            key = (ev.proto, ev.src, ev.sport, ev.dst, ev.dport)
            if self.sensor:  # two sensors may see the same private 5-tuple
                key += (self.sensor,)
            flow = self.flows.get(key)
            first = flow is None
            if flow is None:
                flow = self._first_event(batch, key, ev)
            else:
                self.flows.move_to_end(key)
                if (
                    flow.proc is None
                    and flow.retries < ATTRIBUTION_RETRIES
                    and self.enr.attributor is not None
                ):
                    self._attribute_late(batch, flow, ev)
            if not flow.labelled:
                if flow.org or ev.name or ev.ev == EV_END:
                    self._check_dest(batch, flow, ev, ev.name)
                elif first and len(self.pending) < 2 * self.max_flows:
                    self.pending.append((ev.ts + self.name_wait, key))
                elif first:
                    self._check_dest(batch, flow, ev, "")  # too many waiting: label now
            if ev.cred is not None:
                self._check_cred(batch, flow, ev)
            if ev.d_bytes_out:
                slot = (flow.entity, math.floor(ev.ts / interval) * interval)
                acc = volume.get(slot)
                if acc is None:
                    volume[slot] = [ev.d_bytes_out, ev.ts]
                else:
                    acc[0] += ev.d_bytes_out
                    if ev.ts > acc[1]:
                        acc[1] = ev.ts
            if touched.get(flow.entity, 0.0) < ev.ts:
                touched[flow.entity] = ev.ts
            self.history.add(
                key, flow.entity, flow.label, ev.ts, ev.d_bytes_out, ev.d_bytes_in, ev.ev == EV_END, flow.started
            )
            if observed is not None:
                observed.append((raw, flow))
            if ev.ev == EV_END:
                self.flows.pop(key, None)
        counters["events_in"] += taken
        self._expire_pending(batch, final=False)
        open_intervals = self.open_intervals
        for (entity, istart), (nbytes, latest) in sorted(volume.items(), key=lambda kv: kv[0][1]):
            self._volume(batch, "add", entity, istart, nbytes, latest)
            if istart >= open_intervals.get(entity, -math.inf):
                open_intervals.pop(entity, None)
                open_intervals[entity] = istart
        self._close_intervals(batch)
        last_touch = self._last_touch
        for entity, ts in touched.items():
            if ts >= last_touch.get(entity, -math.inf) + TOUCH_EVERY:
                if len(last_touch) >= MAX_OPEN_INTERVALS:
                    last_touch.clear()
                last_touch[entity] = ts
                self._touch(batch, entity, ts)
        self.history.flush(batch, self._sha["conn_pair"])
        if extra is not None:
            extra(batch)
        return self._run(batch)

    def tick(self, ts: float, extra: Callable[[_Batch], None] | None = None) -> list[dict]:
        """A packet-time watermark without events: expire name waits and close volume intervals."""
        if ts > self.watermark:
            self.watermark = ts
        batch = _Batch()
        self._expire_pending(batch, final=False)
        self._close_intervals(batch)
        if extra is not None:
            extra(batch)
        return self._run(batch)

    def finish(self) -> list[dict]:
        """End of stream or shutdown: label every flow still waiting for a name.

        Open volume intervals are left open in Redis (an unfinished interval is not a full one);
        the next events for the entity, in this run or the next, close them.
        """
        batch = _Batch()
        self._expire_pending(batch, final=True)
        return self._run(batch)

    @property
    def learning(self) -> bool:
        """True while the packet-time watermark is inside the learning window (or nothing seen)."""
        return self.learning_end is None or self.watermark < self.learning_end

    def _is_learning(self, ts: float) -> bool:
        return self.learning_end is None or ts < self.learning_end

    def _known(self, fact: tuple) -> bool:
        """True when ``fact`` is known to be in the baseline; otherwise remember it (its check is
        being queued, so a second identical check in the same batch is not needed)."""
        if fact in self.known:
            return True
        if len(self.known) >= KNOWN_CAP:
            self.known.clear()
        self.known.add(fact)
        return False

    def maintenance(self) -> None:
        """Every few seconds: notice a `baseline reset` (learning window, cached facts), bound
        the entities."""
        self.known.clear()
        try:
            start, end = self.r.hmget(self.keys.learning(), "start", "end")
        except redis.RedisError:
            self.redis_errors += 1
            return
        if start is None or end is None:
            self.learning_start = self.learning_end = None  # learning restarts with the next event
        else:
            self.learning_start, self.learning_end = float(start), float(end)
        self.enforce_entity_cap()
        try:
            self.c["connections_evicted"] += self.history.trim(self.r)
        except redis.RedisError:
            self.redis_errors += 1

    def enforce_entity_cap(self, limit: int = MAX_ENTITIES) -> int:
        """Forget the least recently seen entities beyond ``limit``; return how many."""
        try:
            excess = self.r.zcard(self.keys.entities()) - limit
            if excess <= 0:
                return 0
            gone = [e for e, _ in self.r.zpopmin(self.keys.entities(), excess)]
            for entity in gone:
                self.r.delete(*self.keys.entity_keys(entity, with_cooldown=True))
            self.c["entities_evicted"] += len(gone)
            return len(gone)
        except redis.RedisError:
            self.redis_errors += 1
            return 0

    # --- learning window ---------------------------------------------------------------------
    def _load_scripts(self) -> None:
        """SCRIPT LOAD every script (at start, and again after a NOSCRIPT: Redis restarted)."""
        self._sha.update({name: self.r.script_load(text) for name, text in self._scripts.items()})
        self._script_of = {sha: name for name, sha in self._sha.items() if name != DISPATCH}

    def _load_state(self) -> None:
        self._load_scripts()
        start, end = self.r.hmget(self.keys.learning(), "start", "end")
        if start is not None and end is not None:
            self.learning_start, self.learning_end = float(start), float(end)

    def _start_learning(self, ts: float) -> None:
        """The first event ever starts learning (lua.START_LEARNING: detector shards of one run
        agree on the earliest of their first events)."""

        def go() -> None:
            args = (repr(ts), repr(float(self.det.learning)), self.run_id)
            start, end = self.r.eval(lua.START_LEARNING, 1, self.keys.learning(), *args)
            self.learning_start, self.learning_end = float(start), float(end)

        self._run_with_retry(go)

    # --- checks ------------------------------------------------------------------------------
    def _first_event(self, batch: _Batch, key: tuple, ev: FlowEvent) -> FlowState:
        entity, proc = self._entity(ev)
        flow = FlowState(entity, ev.ts, proc)
        if self.enr.geoip is not None:
            try:
                flow.cc, flow.asn, flow.org = self.enr.geoip.lookup(ev.dst)
            except Exception:  # enrichment is best effort
                self.c["geoip_errors"] += 1
        self.flows[key] = flow
        if len(self.flows) > self.max_flows:
            old_key, old = self.flows.popitem(last=False)
            if not old.labelled:
                self._check_dest(batch, old, _synthetic(old_key, old.started), "")
        learning = self._is_learning(ev.ts)
        self._check_egress(batch, flow, ev, learning)
        if proc is not None and self.enr.identity is not None:
            self._check_identity(batch, flow, ev, learning)
        if flow.cc or flow.asn:
            self._check_geo(batch, flow, ev, learning)
        return flow

    def _attribute_late(self, batch: _Batch, flow: FlowState, ev: FlowEvent) -> None:
        """A flow first seen as the host's: if its process is known now, it becomes that process's.

        The checks of a first event run again for the process (its first egress, its binary
        identity, country and AS), and the destination is labelled for it by this or a later event.
        """
        flow.retries += 1
        entity, proc = self._entity(ev, count_miss=False, at=flow.started)
        if proc is None:
            return
        self.c["unattributed"] -= 1
        self.c["attributed_late"] += 1
        flow.entity, flow.proc, flow.who = entity, proc, alerts.display_name(entity)
        flow.labelled = False
        learning = self._is_learning(ev.ts)
        self._check_egress(batch, flow, ev, learning)
        if self.enr.identity is not None:
            self._check_identity(batch, flow, ev, learning)
        if flow.cc or flow.asn:
            self._check_geo(batch, flow, ev, learning)

    def _entity(
        self, ev: FlowEvent, count_miss: bool = True, at: float | None = None
    ) -> tuple[str, Any | None]:
        """The local executable when attribution works, else the host (its local address).

        ``at``: the flow's first packet time, so the kernel-event join picks the socket's owner
        of that moment (a port reused later belongs to another process)."""
        if self.enr.attributor is not None:
            try:
                at = ev.ts if at is None else at
                try:
                    proc = self.enr.attributor.lookup(ev.proto, ev.src, ev.sport, ev.dst, ev.dport, at=at)
                except TypeError:  # an attributor without the time parameter
                    proc = self.enr.attributor.lookup(ev.proto, ev.src, ev.sport, ev.dst, ev.dport)
            except Exception:
                proc = None
            if proc is not None and getattr(proc, "exe", ""):
                return sensor_entity.qualify(proc.exe, self.sensor), proc
            if count_miss:
                self.c["unattributed"] += 1
        return sensor_entity.qualify("host:" + ev.src, self.sensor), None

    def _facts(self, flow: FlowState, ev: FlowEvent, name: str) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "flow": {"proto": ev.proto, "src": ev.src, "sport": ev.sport, "dst": ev.dst, "dport": ev.dport},
        }
        if name:
            facts["name"] = name
            facts["name_src"] = ev.name_src
        sensor = sensor_entity.split(flow.entity)[1]
        if sensor:
            facts["sensor"] = sensor
        if flow.cc:
            facts["country"] = flow.cc
        if flow.asn:
            facts["asn"] = flow.asn
        if flow.org:
            facts["as_org"] = flow.org
        proc = flow.proc
        if proc is not None:
            for attr, field in _PROC_FACTS:
                value = getattr(proc, attr, None)
                if value not in (None, ""):
                    facts[field] = list(value) if isinstance(value, (list, tuple)) else value
        return facts

    def _destination(self, ev: FlowEvent, name: str) -> str:
        return name or alerts.endpoint(ev.dst, ev.dport)

    def _novel(
        self, batch: _Batch, entity: str, ts: float, learning: bool, kind: str, targets: list[tuple]
    ) -> None:
        """Queue CHECK_NOVEL; targets are (mode, key, member, value, dedup, alert map)."""
        keys = [self.keys.cooldown(entity)] + [t[1] for t in targets]
        if self.append_in_script:
            keys.append(self.keys.alerts())
        args: list[Any] = [
            int(learning),
            repr(ts),
            self.det.cooldown,
            SET_CAP,
            self.det.alert_stream_max,
            kind,
            len(targets),
        ]
        for mode, _key, member, value, dedup, alert in targets:
            args += [mode, member, value, dedup, alerts.to_json(alert)]
        batch.script("novel", keys, args)

    def _check_egress(self, batch: _Batch, flow: FlowState, ev: FlowEvent, learning: bool) -> None:
        if self._known((flow.entity, "egress")):
            return
        dest = self._destination(ev, ev.name)
        alert = alerts.build(
            "new_process_egress",
            "warning",
            ev.ts,
            flow.entity,
            dest,
            f"{flow.who} made its first outbound connection, to {dest}",
            self._facts(flow, ev, ev.name),
        )
        target = ("h", self.keys.entity(flow.entity), "first_seen", repr(ev.ts), "egress", alert)
        self._novel(batch, flow.entity, ev.ts, learning, "new_process_egress", [target])

    def _check_dest(
        self, batch: _Batch, flow: FlowState, ev: FlowEvent, name: str, ts: float | None = None
    ) -> None:
        flow.labelled = True
        ts = flow.started if ts is None else ts
        label = flow.org
        if not label and name:
            try:
                label = self.enr.registrable_domain(name)
            except Exception:
                label = ""
        label = alerts.clean_text(label or ev.dst, limit=253)
        flow.label = label
        if self._known((flow.entity, SET_DEST, label)):
            return
        dest = self._destination(ev, name)
        title = f"{flow.who} contacted a new destination: {label}"
        if name and name != label:
            title += f" ({name})"
        facts = self._facts(flow, ev, name)
        facts["label"] = label
        alert = alerts.build("new_process_dest", "notice", ts, flow.entity, dest, title, facts)
        target = ("s", self.keys.entity_set(flow.entity, SET_DEST), label, "", f"dest:{label}", alert)
        self._novel(batch, flow.entity, ts, self._is_learning(ts), "new_process_dest", [target])

    def _check_cred(self, batch: _Batch, flow: FlowState, ev: FlowEvent) -> None:
        """An outbound login in the clear: a warning once per entity, protocol, user and destination.

        Raised during the learning window too (a password on the wire is never "normal"). The
        event carries the protocol and the user name only: the secret never leaves the decoder.
        """
        protocol, user = ev.cred or ("", "")
        dest = self._destination(ev, ev.name)
        member = f"{protocol}|{user}|{dest}"
        if self._known((flow.entity, SET_CRED, member)):
            return
        who = f"user {user!r}" if user else "a login"
        title = f"{flow.who} sent {who} over cleartext {protocol} to {dest}"
        facts = self._facts(flow, ev, ev.name)
        facts["protocol"] = protocol
        facts["user"] = user
        alert = alerts.build("cleartext_credential", "warning", ev.ts, flow.entity, dest, title, facts)
        target = ("s", self.keys.entity_set(flow.entity, SET_CRED), member, "", f"cred:{member}", alert)
        self._novel(batch, flow.entity, ev.ts, False, "cleartext_credential", [target])

    def _check_geo(self, batch: _Batch, flow: FlowState, ev: FlowEvent, learning: bool) -> None:
        dest = self._destination(ev, ev.name)
        facts = self._facts(flow, ev, ev.name)
        targets = []
        if flow.cc and not self._known((flow.entity, SET_COUNTRY, flow.cc)):
            cc = alerts.clean_text(flow.cc, limit=8)
            title = f"{flow.who} connected to a new country: {cc} ({dest})"
            alert = alerts.build(
                "new_geo", "notice", ev.ts, flow.entity, dest, title, dict(facts, new="country")
            )
            targets.append(("s", self.keys.entity_set(flow.entity, SET_COUNTRY), cc, "", f"cc:{cc}", alert))
        if flow.asn and not self._known((flow.entity, SET_ASN, flow.asn)):
            org = f" ({alerts.clean_text(flow.org, limit=120)})" if flow.org else ""
            title = f"{flow.who} connected to a new network: AS{flow.asn}{org} via {dest}"
            alert = alerts.build("new_geo", "notice", ev.ts, flow.entity, dest, title, dict(facts, new="asn"))
            key = self.keys.entity_set(flow.entity, SET_ASN)
            targets.append(("s", key, str(flow.asn), "", f"asn:{flow.asn}", alert))
        if targets:
            self._novel(batch, flow.entity, ev.ts, learning, "new_geo", targets)

    def _check_identity(self, batch: _Batch, flow: FlowState, ev: FlowEvent, learning: bool) -> None:
        proc = flow.proc
        try:
            if getattr(proc, "source", "") == "bpf":
                # hashed at exec while the process lived; none when that could not be verified
                # (hashing the path now could name a binary put there since)
                ident = proc.sha256 or None
            else:
                ident = self.enr.identity.identity(proc.exe, getattr(proc, "pid", None))
        except Exception:
            ident = None
        if not ident:
            self.c["identity_unknown"] += 1
            return
        fact = (flow.entity, "identity", ident)
        if fact in self.known:
            return
        dest = self._destination(ev, ev.name)
        facts = self._facts(flow, ev, ev.name)
        facts["new_identity"] = ident
        facts["old_identity"] = IDENTITY_PLACEHOLDER_OLD
        alert = alerts.build("identity_change", "critical", ev.ts, flow.entity, dest, "", facts)
        alert["detail"]["old_identity"] = IDENTITY_PLACEHOLDER_OLD  # clean_value escaped it
        alert["title"] = IDENTITY_PLACEHOLDER_TITLE
        before = alerts.clean_text(f"{flow.who}'s binary changed (sha256 ")
        after = alerts.clean_text(f"... -> {ident[:12]}...) and it connected out to {dest}")
        keys = [self.keys.entity(flow.entity), self.keys.cooldown(flow.entity)]
        if self.append_in_script:
            keys.append(self.keys.alerts())
        args = [
            int(learning),
            repr(ev.ts),
            self.det.cooldown,
            SET_CAP,
            self.det.alert_stream_max,
            "identity_change",
            ident,
            f"identity:{ident}",
            alerts.to_json(alert),
            before,
            after,
        ]
        batch.script("identity", keys, args, remember=fact)  # cached only when it is the baseline

    def _volume(
        self, batch: _Batch, op: str, entity: str, istart: float, nbytes: int, latest: float = 0.0
    ) -> None:
        det = self.det
        cached = self._volume_args.get(entity)
        if cached is None:
            alert = alerts.build("volume_spike", "warning", 0.0, entity, "", "", {})
            alert.update(title=VOL_TITLE, severity=VOL_SEVERITY, ts=VOL_TS, detail=VOL_FACTS)
            keys = [self.keys.volume(entity), self.keys.cooldown(entity)]
            if self.append_in_script:
                keys.append(self.keys.alerts())
            title = alerts.clean_text(f"{alerts.display_name(entity)} sent ")
            cached = (keys, alerts.to_json(alert), title)
            if len(self._volume_args) >= MAX_OPEN_INTERVALS:
                self._volume_args.clear()
            self._volume_args[entity] = cached
        keys, template, title = cached
        args = [
            op,
            repr(istart),
            nbytes,
            repr(self.watermark),
            det.volume_interval,
            det.ewma_alpha,
            det.z_threshold,
            det.volume_floor,
            det.min_intervals,
            repr(1e300 if self.learning_end is None else self.learning_end),
            det.cooldown,
            SET_CAP,
            det.alert_stream_max,
            template,
            title,
            repr(latest),
            self.run_id,
        ]
        batch.script("volume", keys, args)

    def _touch(self, batch: _Batch, entity: str, ts: float) -> None:
        batch.command("zadd", self.keys.entities(), {entity: ts}, gt=True)
        batch.command("evalsha", self._sha["touch"], 1, self.keys.entity(entity), repr(ts), entity)

    def _expire_pending(self, batch: _Batch, final: bool, before: float | None = None) -> None:
        """Label flows whose name wait is over (all of them when ``final``).

        ``before``: only waits that ended before that packet time. ``process`` calls this ahead of
        each event, so a wait that ended before an event is settled before the event is handled,
        whatever frame either arrived in: the alerts are the same however events are framed.
        """
        pending = self.pending
        while pending and (
            final or (pending[0][0] < before if before is not None else pending[0][0] <= self.watermark)
        ):
            deadline, key = pending.popleft()
            flow = self.flows.get(key)
            if flow is not None and not flow.labelled:
                self._check_dest(batch, flow, _synthetic(key, deadline), "")

    def _close_intervals(self, batch: _Batch) -> None:
        interval = self.det.volume_interval
        due = [e for e, s in self.open_intervals.items() if s + interval <= self.watermark]
        for entity in due:
            self._volume(batch, "close", entity, self.open_intervals.pop(entity), 0)
        while len(self.open_intervals) > MAX_OPEN_INTERVALS:
            self.open_intervals.pop(next(iter(self.open_intervals)))

    # --- running a batch -----------------------------------------------------------------------
    def _run(self, batch: _Batch) -> list[dict]:
        commands = batch.checks + batch.plain
        if not commands:
            return []
        results = self._run_with_retry(self._executor(commands))
        if results is None:
            self.c["batches_dropped"] += 1
            return []
        raised: list[dict] = []
        to_append: list[dict] = []
        for result, fact in zip(results[: len(batch.checks)], batch.remember, strict=True):
            if isinstance(result, Exception):
                log.error("detector script failed: %s", result)
                self.redis_errors += 1
                continue
            status = result[0]
            end = len(result)
            if end % 2 == 0:  # a trailing count: members/cooldowns a cap pushed out (lua.CHECK_NOVEL)
                end -= 1
                self.c["caps_hit"] += int(result[end])
            if fact is not None and status in (lua.KNOWN, lua.LEARNED) and len(self.known) < KNOWN_CAP:
                self.known.add(fact)
            if status == lua.COOLDOWN:
                self.c["alerts_suppressed"] += 1
            elif status == lua.BEHIND:
                self.c["volume_behind"] += 1
            elif status == lua.ALERTED:
                for i in range(1, end - 1, 2):  # one (stream id, alert) pair per new fact
                    entry_id, text = result[i], result[i + 1]
                    alert = json.loads(text)
                    alert["id"] = entry_id
                    raised.append(alert)
                    if not entry_id:
                        to_append.append(alert)
        for result in results[len(batch.checks) :]:
            if isinstance(result, Exception):
                log.error("detector command failed: %s", result)
                self.redis_errors += 1
        if to_append:
            self._append(to_append)
        self.c["alerts"] += len(raised)
        return raised

    def _append(self, raised: list[dict]) -> None:
        """Cluster mode: the process that won the decision appends the alerts itself, once each
        (lua.APPEND_ONCE skips an alert already in the stream: a retried append never doubles)."""
        argv: list[Any] = [self.det.alert_stream_max]
        for alert in raised:
            stored = {k: v for k, v in alert.items() if k != "id"}  # the id is the entry's, added by readers
            argv += [repr(float(alert.get("ts") or 0.0)), alert["kind"], alerts.to_json(stored)]
        keys = [self.keys.alerts(), self.keys.alerts_appended()]
        results = self._run_with_retry(self._executor([("append_once", (keys, argv), {})])) or [[]]
        ids = results[0] if isinstance(results[0], list) else []
        if isinstance(results[0], Exception):
            log.error("alert append failed: %s", results[0])
            self.redis_errors += 1
        for alert, entry_id in zip(raised, ids, strict=False):
            if entry_id:
                alert["id"] = entry_id
            else:
                self.c["alerts_already_appended"] += 1

    def _executor(self, commands: list[tuple[str, tuple, dict]]) -> Callable[[], list]:
        """One round trip's commands as a retryable call: each retry sends only what has no answer yet.

        A Cluster pipeline spreads the commands over the masters; when one master fails over, the
        others' answers are kept, and only the dead master's commands go again (to the promoted
        replica) once it answers. Their scripts are idempotent, so what the dead master had done
        and replicated is found done, not done twice.
        """
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))

        def go() -> list:
            while pending:
                answers = self._execute([commands[i] for i in pending])
                retry: list[int] = []
                unavailable: Exception | None = None
                for i, answer in zip(list(pending), answers, strict=True):
                    results[i] = answer
                    if isinstance(answer, UNAVAILABLE):
                        retry.append(i)
                        unavailable = unavailable or answer
                # sent, unanswered, and sent again: a script among them may have run on the dead
                # master (its alert then missing, never doubled); counted so the loss is told
                self.c["redis_commands_resent"] += len(retry)
                pending[:] = retry
                if unavailable is not None:
                    raise unavailable  # _run_with_retry waits, counts the outage, calls again
            return results

        return go

    def _execute(self, commands: list[tuple[str, tuple, dict]]) -> list:
        if self._plain:  # one round trip without redis-py's pipeline layers (shared/redis_batch.py)
            results = self._execute_plain(commands)
        else:
            pipe = self.r.pipeline(transaction=False)
            for name, args, kwargs in commands:
                self._queue(pipe, name, args, kwargs)
            results = pipe.execute(raise_on_error=False)
        missing = [i for i, x in enumerate(results) if isinstance(x, redis.exceptions.NoScriptError)]
        if missing:
            # Redis restarted, flushed its script cache, or a replica took over (scripts loaded
            # with SCRIPT LOAD are not replicated): those did not run; load and send only them
            # (on a Cluster the other masters' scripts did run and must not run twice)
            self._load_scripts()
            again = self._execute([commands[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                results[i] = answer
        return results

    def _queue(self, pipe: Any, name: str, args: tuple, kwargs: dict) -> None:
        """One command on a redis-py pipeline: a script of ours by name, or any pipeline method."""
        if name in self._sha:
            keys, argv = args
            evalsha(pipe, self._sha[name], keys, argv)
        elif name in ("evalsha", "eval"):  # a Cluster pipeline refuses these methods: send them raw
            pipe.execute_command(name.upper(), *args)
        else:
            getattr(pipe, name)(*args, **kwargs)

    def _script_call(self, name: str, args: tuple) -> tuple[str, Any, Any] | None:
        """(script name, keys, args) of a call of one of our scripts, else None."""
        if name in self._sha:
            return (name, *args)
        if name == "evalsha" and args[0] in self._script_of:
            nkeys = int(args[1])
            return (self._script_of[args[0]], args[2 : 2 + nkeys], args[2 + nkeys :])
        return None

    def _execute_plain(self, commands: list[tuple[str, tuple, dict]]) -> list:
        """Every script call as one dispatcher call (script_batch), then the other commands.

        The other commands (index ZADDs, the frame sequence HSET) never touch a key a script
        reads or writes, so running them after every script call changes no outcome.
        """
        calls: list[tuple[str, Any, Any]] = []
        call_at: list[int] = []
        others: list[int] = []
        pipe = self.r.pipeline(transaction=False)
        for i, (name, args, kwargs) in enumerate(commands):
            call = self._script_call(name, args) if self._dispatch else None
            if call is not None:
                calls.append(call)
                call_at.append(i)
            else:
                self._queue(pipe, name, args, kwargs)
                others.append(i)
        # at most DISPATCH_MAX_CALLS a script run, so that no run holds Redis long (the end of a
        # replay labels every waiting flow in one batch: tens of thousands of calls)
        chunks = [calls[i : i + DISPATCH_MAX_CALLS] for i in range(0, len(calls), DISPATCH_MAX_CALLS)]
        batch = [script_batch.dispatch_command(self._sha[DISPATCH], chunk) for chunk in chunks]
        batch += [args for args, _options in pipe.command_stack]
        pipe.reset()
        replies = run_batch(self.r, batch)
        results: list[Any] = [None] * len(commands)
        answers: list[Any] = []
        for chunk, reply in zip(chunks, replies, strict=False):
            if not isinstance(reply, list) or len(reply) != len(chunk):
                # the dispatcher itself failed (NOSCRIPT after a restart, ...): so did every call
                failed = reply if isinstance(reply, Exception) else ResponseError(f"dispatcher answered {reply!r}")
                reply = [failed] * len(chunk)
            answers += reply
        for i, answer in zip(call_at, answers, strict=True):
            results[i] = answer
        for i, answer in zip(others, replies[len(chunks) :], strict=True):
            results[i] = answer
        return results

    def _run_with_retry(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` until Redis answers (backpressure), or give up when asked to stop."""
        delay = 0.05
        outages = getattr(self, "outages", None)  # shared.outages.Outages, set by the service
        while True:
            started = time.monotonic()
            try:
                result = fn()
                if outages is not None:
                    outages.slow(started)
                return result
            except UNAVAILABLE as exc:
                if outages is not None:
                    outages.failed()
                self.redis_errors += 1
                recover(self.r)
                if self.stop():
                    log.error("Redis unavailable while stopping: %s", exc)
                    return None
                log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


def _synthetic(key: tuple, ts: float) -> FlowEvent:
    """An event standing for a flow when no real event is at hand (name wait over, eviction)."""
    proto, src, sport, dst, dport = key[:5]
    return FlowEvent("update", ts, proto, src, sport, dst, dport, True, 0, "", "")
