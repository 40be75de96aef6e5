"""A sensor's stats reach the pool, so `pktscope status` there lists every sensor's instances.

The sensor's services write their stats hashes to the sensor's own (private) Redis, as on a
single host. Flow-tracker 0 of a sensor reads them every ``RELAY_EVERY`` seconds and sends them
in a STATS frame to detector shard 0 of the pool, which keeps them under
``<prefix>:sensor:<name>:stats:<service>`` (services/detector/sensor_stats.py). One frame per
few seconds on the link that is up anyway: no Redis reachable across hosts is needed.
"""

from __future__ import annotations

import time

import redis

from shared.config import PipelineConfig
from shared.redis_keys import Keys

RELAY_EVERY = 2.0  # wall seconds between two STATS frames


def sensor_services(cfg: PipelineConfig) -> list[str]:
    """The stats hashes a sensor's run writes."""
    names = [*cfg.capture_names(), *(f"decoder-{i}" for i in range(cfg.decoders)), *cfg.tracker_names()]
    if cfg.procwatch_enabled:
        names.append("procwatch")
    return names


class StatsRelay:
    def __init__(self, cfg: PipelineConfig, r: redis.Redis | None, keys: Keys) -> None:
        self.names = sensor_services(cfg)
        self.r = r
        self.keys = keys
        self.next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if self.r is None or now < self.next:
            return False
        self.next = now + RELAY_EVERY
        return True

    def collect(self) -> dict[str, dict[str, str]]:
        """{service: its stats hash} for the services that wrote one; {} while Redis is out."""
        assert self.r is not None
        try:
            pipe = self.r.pipeline(transaction=False)
            for name in self.names:
                pipe.hgetall(self.keys.stats(name))
            replies = pipe.execute()
        except redis.RedisError:
            return {}
        return {name: _texts(h) for name, h in zip(self.names, replies, strict=True) if h}


def _texts(h: dict) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in h.items()
    }
