"""What the detector tells beyond alerts: the live view in Redis and the EVE log.

The engine appends every event of a frame to ``engine.observed`` (row, and the flow's state
for outbound flows); after each frame the detector hands them, and the alerts raised, to
``Observers.frame``. Both parts are bounded and never block the pipeline on a reader.
"""

from __future__ import annotations

import logging
import signal
from collections import Counter

import redis

from services.detector.engine import DetectorEngine
from services.detector.eve import EveWriter
from services.detector.live_store import LiveStore
from shared.config import PipelineConfig
from shared.observe_keys import ObserveKeys

log = logging.getLogger(__name__)


class Observers:
    def __init__(self, cfg: PipelineConfig, r: redis.Redis, engine: DetectorEngine, counters: Counter[str]):
        self.engine = engine
        self.c = counters
        label_of = engine.enr.registrable_domain
        self.live = LiveStore(r, ObserveKeys(cfg.redis_prefix), label_of, counters=counters)
        try:
            self.live.reset()
        except redis.RedisError:
            self.c["live.redis_errors"] += 1
        self.eve: EveWriter | None = None
        eve_path = getattr(cfg, "eve_log", "")
        if eve_path:
            self.eve = EveWriter(eve_path, label_of)
            signal.signal(signal.SIGHUP, self.eve.request_reopen)
        engine.observed = []

    def frame(self, raised: list[dict]) -> None:
        """The events of the frame just processed, and its alerts."""
        observed = self.engine.observed
        if observed:
            live, eve = self.live.observe, self.eve.observe if self.eve is not None else None
            for raw, flow in observed:
                live(raw, flow)
                if eve is not None:
                    eve(raw, flow)
            observed.clear()
        for alert in raised:
            self.c[f"alerts.{alert.get('kind', '')}"] += 1  # alerts by kind, for the exporter
        if self.eve is not None:
            for alert in raised:
                self.eve.alert(alert)

    def idle(self) -> None:
        """Every turn of the detector's loop: write the live view when due, reopen/flush EVE."""
        self.live.maybe_flush()
        if self.eve is not None:
            self.eve.maybe_reopen()
            self.eve.flush()
            for kind, n in self.eve.counts.items():
                self.c[f"eve.{kind}"] = n
            self.c["eve.errors"] = self.eve.errors

    def close(self) -> None:
        self.live.flush()
        if self.eve is not None:
            self.idle()
            self.eve.close()
