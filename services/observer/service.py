"""The observer process: takes the detector's forwarded frames (services/detector/observers.py)
and keeps the live view in Redis (services/detector/live_store.py) and the EVE log
(services/detector/eve.py, with --eve-log). SIGHUP reopens the EVE log (logrotate).

A frame's rows are the flow-tracker's events as the detector received them; the facts that
come with them (entity, process, GeoIP of outbound flows) are remembered per 5-tuple until the
flow ends. At the detector's end of stream the observer writes everything out, says ``eos`` in
its stats (which `pktscope run` waits for) and exits 0; with detector shards, once every one
of them ended. Each shard sends the facts of its own flows (a flow's events go to one shard).
"""

from __future__ import annotations

import logging
import signal
from collections import OrderedDict
from typing import Any, NamedTuple

import msgpack
import redis
import zmq

from services.detector import flows_skim
from services.detector.eve import EveWriter
from services.detector.live_store import _DPORT, _DST, _EV, _OUT, _PROTO, _ROW_LEN, _SPORT, _SRC, LiveStore
from services.detector.observers import EOS_MARK, observer_endpoint
from shared import frames
from shared.config import PipelineConfig
from shared.flowevents import EV_END
from shared.observe_keys import ObserveKeys
from shared.redis_conn import connect_until_ready
from shared.service import StopFlag, loop_starting
from shared.sockets import bind_pull
from shared.stats import ServiceStats

log = logging.getLogger(__name__)

POLL_MS = 200
MAX_FLOWS = 200_000  # outbound flows whose facts are kept (oldest forgotten beyond)


class FlowFacts(NamedTuple):
    """What the detector knew of a flow; the attribute names record() and EveWriter read."""

    entity: str
    cc: str
    asn: int
    org: str
    proc: dict | None


def _label_of():
    try:
        from services.detector.enrich.domains import registrable_domain

        return registrable_domain
    except ImportError:
        from services.detector.enrichment import _fallback_domain

        return _fallback_domain


class ObserverService:
    def __init__(self, cfg: PipelineConfig, stop: StopFlag) -> None:
        self.cfg = cfg
        self.stop = stop
        self.flows: OrderedDict[tuple, FlowFacts] = OrderedDict()

    def run(self) -> int:
        ctx = zmq.Context()
        pull = bind_pull(ctx, observer_endpoint(self.cfg), self.cfg.hwm)
        r = connect_until_ready(self.cfg.effective_redis_url, self.stop, self.cfg.redis_cluster, "observer")
        if r is None:
            return 0
        keys = ObserveKeys(self.cfg.redis_prefix)
        stats = ServiceStats("observer", r, keys)
        label_of = _label_of()
        live = LiveStore(r, keys, label_of, counters=stats.c)
        try:
            live.reset()  # what an earlier run (or a killed observer) left is not open any more
        except redis.RedisError:
            stats.c["live.redis_errors"] += 1
        eve = EveWriter(self.cfg.eve_log) if self.cfg.eve_log else None
        if eve is not None:
            signal.signal(signal.SIGHUP, eve.request_reopen)
        for name in ("frames_in", "events_in", "bad_frames"):
            stats.c[name] += 0
        loop_starting(stats)
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        ended = False
        waiting = max(1, len(self.cfg.detector_names()))  # one end of stream per detector shard
        while not self.stop and not ended:
            if poller.poll(POLL_MS) and self.handle(pull.recv_multipart(), live, eve, stats):
                waiting -= 1
                ended = waiting <= 0
            live.maybe_flush()
            if eve is not None:
                eve.maybe_reopen()
                eve.flush()
                for kind, n in eve.counts.items():
                    stats.c[f"eve.{kind}"] = n
                stats.c["eve.errors"] = eve.errors
            stats.maybe_flush()
        live.flush()
        if eve is not None:
            eve.close()
            for kind, n in eve.counts.items():
                stats.c[f"eve.{kind}"] = n
        stats.flush(**({"eos": 1} if ended else {}))
        pull.close()
        ctx.term()
        return 0

    def handle(self, parts: list[bytes], live: LiveStore, eve: EveWriter | None, stats: ServiceStats) -> bool:
        """One forwarded message; True at the detector's end of stream."""
        c = stats.c
        if len(parts) == 4 and parts[3] == EOS_MARK:
            return True
        if len(parts) != 3:
            c["bad_frames"] += 1
            return False
        c["frames_in"] += 1
        try:
            facts = msgpack.unpackb(parts[1], raw=False)
            alerts = msgpack.unpackb(parts[2], raw=False)
        except Exception:
            c["bad_frames"] += 1
            return False
        flows = self.flows
        for item in facts if isinstance(facts, list) else ():
            if isinstance(item, list) and len(item) == 10:
                proto, src, sport, dst, dport, entity, cc, asn, org, proc = item
                flows[(proto, src, sport, dst, dport)] = FlowFacts(
                    str(entity), cc or "", asn or 0, org or "", proc if isinstance(proc, dict) else None
                )
                if len(flows) > MAX_FLOWS:
                    flows.popitem(last=False)
        if parts[0]:
            # without an EVE log, inbound flows' rows stay packed until the live view writes them
            # (most end before it does): the frame is read in place (services/detector/flows_skim.py)
            skim = flows_skim.live_rows(parts[0]) if eve is None else None
            if skim is not None:
                c["events_in"] += self._take(skim[2], live)
                return False
            try:
                frame = frames.decode(parts[0])
            except frames.FrameError:
                c["bad_frames"] += 1
                return False
            rows: Any = frame.body if isinstance(frame.body, (list, tuple)) else ()
            observe_live = live.observe
            observe_eve = eve.observe if eve is not None else None
            n = 0
            for row in rows:
                if type(row) is not tuple or len(row) != _ROW_LEN:
                    continue
                n += 1
                # the detector sends facts of outbound flows only
                flow = self._facts_of(row) if row[_OUT] is True else None
                observe_live(row, flow)
                if observe_eve is not None:
                    observe_eve(row, flow)
            c["events_in"] += n
        if eve is not None and isinstance(alerts, list):
            for alert in alerts:
                if isinstance(alert, dict):
                    eve.alert(alert)
        return False

    def _take(self, items: list, live: LiveStore) -> int:
        """A frame read by flows_skim.live_rows into the live view; how many rows were events."""
        take = live.take
        observe = live.observe
        n = 0
        for i in range(0, len(items), 4):
            key = items[i]
            if key is not None:  # an inbound flow's event, still packed
                n += 1
                take(key, items[i + 1], items[i + 2], items[i + 3], None)
                continue
            row = items[i + 1]
            if type(row) is not tuple or len(row) != _ROW_LEN:
                continue
            n += 1
            observe(row, self._facts_of(row) if row[_OUT] is True else None)
        return n

    def _facts_of(self, row: tuple) -> FlowFacts | None:
        """What the detector sent of an outbound flow; forgotten at its end."""
        key = (row[_PROTO], row[_SRC], row[_SPORT], row[_DST], row[_DPORT])
        flow = self.flows.get(key)
        if flow is not None and row[_EV] == EV_END:
            del self.flows[key]
        return flow
