"""Per-service counters, published to Redis about once a second for ``pktscope status``."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping

import redis

from shared.redis_keys import Keys

RUN_ID = ""  # set once per process by shared.service.service_args from the pipeline config


class ServiceStats:
    """A Counter plus a heartbeat writer.

    Hot loops add to ``self.c`` (a plain Counter: cheap) and call ``maybe_flush()`` once per
    batch; the Redis write happens at most every ``interval`` seconds. A Redis outage is
    counted, never fatal: monitoring must not stop the pipeline.
    """

    def __init__(self, service: str, r: redis.Redis | None, keys: Keys, interval: float = 1.0) -> None:
        self.service = service
        self.r = r
        self.keys = keys
        self.interval = interval
        self.c: Counter[str] = Counter()
        self.info: dict[str, str | int | float] = {"pid": os.getpid(), "started": time.time()}
        self._next = 0.0
        self.redis_errors = 0
        self._own_hash = False  # the hash holds this run's figures (an older run's is deleted first)
        # more counters, read only when flushing (e.g. the decoder's application-layer counters)
        self.sources: list[Callable[[], Mapping[str, int | float]]] = []

    def ready(self) -> None:
        """Say that the service has started and waits for frames (offline capture waits for it)."""
        self.info["ready"] = 1
        self.info["cpu_at_ready"] = round(time.process_time(), 4)  # start-up cost, left out by scripts/bench
        self.flush()

    def maybe_flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.interval
            self.flush()

    def flush(self, **extra: str | int | float) -> None:
        if self.r is None:
            return
        mapping: dict[str, str | int | float] = dict(self.c)
        for source in self.sources:
            mapping.update(source())
        mapping.update(self.info)
        mapping.update(extra)
        mapping["heartbeat"] = time.time()
        mapping["run_id"] = RUN_ID
        mapping["cpu_seconds"] = round(time.process_time(), 4)  # per-stage cost in scripts/bench
        mapping["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak memory
        mapping["redis_errors"] = self.redis_errors
        try:
            key = self.keys.stats(self.service)
            if not self._own_hash:
                # what an earlier run left (its eos, ready, counters) must not show as this run's
                if self.r.hget(key, "run_id") not in (RUN_ID, RUN_ID.encode()):
                    self.r.delete(key)
                self._own_hash = True
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(key, mapping=mapping)
            pipe.sadd(self.keys.services(), self.service)
            pipe.execute()
        except redis.RedisError:
            self.redis_errors += 1


def wait_until_ready(r: redis.Redis, keys: Keys, services: list[str], timeout: float) -> list[str]:
    """Wait until every named service of this run said ``ready``; return those that did not.

    An offline replay waits for this so that the services still importing and connecting do
    not compete with it for the CPU (interpreter start-up is 0.3 CPU s per service here).
    """
    deadline = time.monotonic() + timeout
    waiting = list(services)
    while True:
        try:
            pipe = r.pipeline(transaction=False)
            for name in waiting:
                pipe.hmget(keys.stats(name), "ready", "run_id")
            replies = pipe.execute()
        except redis.RedisError:
            replies = [(None, None)] * len(waiting)
        waiting = [
            name
            for name, (ready, run_id) in zip(waiting, replies, strict=True)
            if not (_text(ready) == "1" and _text(run_id) == RUN_ID)
        ]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.02)


def wait_until_ended(r: redis.Redis | None, keys: Keys, receivers: list[str], timeout: float) -> list[str]:
    """After sending its end of stream, wait until every receiver of this run has handled it
    (its stats say ``eos``); return those that did not in time.

    A PUSH sender must not exit before that: ZeroMQ drops the frames still in the connection
    when a sender goes away while its receiver is behind (its receive queue full), whatever
    the sender's LINGER. Seen on replays as a detector that never got the last 64 frames and
    the EOS, and the run waiting for ever. Receivers that never registered for this run (a
    test's bare socket) are not waited for.
    """
    if r is None:
        return []
    deadline = time.monotonic() + timeout
    waiting = list(receivers)
    while True:
        try:
            pipe = r.pipeline(transaction=False)
            for name in waiting:
                pipe.hmget(keys.stats(name), "eos", "run_id")
            replies = pipe.execute()
        except redis.RedisError:
            replies = [("1", RUN_ID)] * len(waiting)  # no way to know: fall back on the linger
        waiting = [
            name
            for name, (eos, run_id) in zip(waiting, replies, strict=True)
            if _text(run_id) == RUN_ID and _text(eos) != "1"
        ]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.02)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
