"""Per-service counters, published to Redis about once a second for ``pktscope status``."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping

import redis

from shared import end_wake
from shared.deferred_write import DeferredWrites
from shared.outages import Outages
from shared.redis_conn import is_cluster
from shared.redis_keys import Keys

OUTAGE_RETRY = 5.0  # seconds between stats writes while Redis is out
# A forked service (services/launcher) is ready a few ms after its start, which can be before the
# private redis-server supervisord starts beside it answers: its "ready" (what an offline capture
# waits for) then waited OUTAGE_RETRY. A Redis still starting is not an outage: wait this long.
READY_WAIT = 2.0
OUTAGE_FIELDS = ("redis_outages", "redis_outage_ms", "redis_outage_longest_ms")
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
        self.outages = Outages(self.c)  # shared with any other Redis user of this process
        # more counters, read only when flushing (e.g. the decoder's application-layer counters)
        self.sources: list[Callable[[], Mapping[str, int | float]]] = []
        self._deferred: DeferredWrites | None = None  # progress writes (shared/continuity.py)

    def ready(self) -> None:
        """Say that the service has started and waits for frames (offline capture waits for it)."""
        self.info["ready"] = 1
        self.info["cpu_at_ready"] = round(time.process_time(), 4)  # start-up cost, left out by scripts/bench
        self.await_redis(READY_WAIT)
        self.flush()

    def await_redis(self, wait: float) -> None:
        """Before this process's first write only: give a Redis that is still starting ``wait`` s."""
        if self.r is None or self._own_hash:
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                self.r.ping()
                return
            except redis.RedisError:
                if time.monotonic() >= deadline:
                    return  # an outage after all: flush counts it
                time.sleep(0.01)

    def write_deferred(self, mapping: Mapping[str, str | int | float]) -> None:
        """HSET ``mapping`` into this service's hash without waiting for the reply (it is read
        later: shared/deferred_write.py). A Cluster client waits. Raises
        redis.RedisError, for this write or an earlier one."""
        if self.r is None:
            return
        key = self.keys.stats(self.service)
        if is_cluster(self.r):
            self.r.hset(key, mapping=dict(mapping))
            return
        if self._deferred is None:
            self._deferred = DeferredWrites(self.r)
        flat = [x for kv in mapping.items() for x in kv]
        self._deferred.send("HSET", key, *flat)

    def maybe_flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next:
            # while Redis is out, try less often: a paused server holds each try for the timeout
            self._next = now + (self.interval if not self.outages.down else OUTAGE_RETRY)
            self.flush()

    def flush_final(self, wait: float = 300.0, **extra: str | int | float) -> bool:
        """The last write (``eos`` and the final counters): retried with backoff through a Redis
        outage, up to ``wait`` seconds, because `pktscope run` ends on it. True once written."""
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            if self.flush(**extra):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def flush(self, **extra: str | int | float) -> bool:
        """Write the counters now; False if Redis did not take them (counted, never raised)."""
        if self.r is None:
            return False
        mapping: dict[str, str | int | float] = dict(self.c)
        for source in self.sources:
            mapping.update(source())
        mapping.update(self.info)
        mapping.update(extra)
        if "eos" in extra:  # which process ended the stream: a successor's pid replaces ``pid``
            mapping["eos_pid"] = os.getpid()
        mapping["heartbeat"] = time.time()
        mapping["run_id"] = RUN_ID
        mapping["cpu_seconds"] = round(time.process_time(), 4)  # per-stage cost in scripts/bench
        mapping["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak memory
        mapping["redis_errors"] = self.redis_errors
        try:
            if self._deferred is not None:
                self._deferred.drain()  # a deferred write landing after this one would undo it
            key = self.keys.stats(self.service)
            if not self._own_hash:
                # what an earlier run left (its eos, ready, counters) must not show as this run's
                run_id, pid, restarts = self.r.hmget(key, "run_id", "pid", "restarts")
                if run_id not in (RUN_ID, RUN_ID.encode()):
                    self.r.delete(key)
                elif pid is not None and _text(pid) != str(os.getpid()):
                    # the same run, another process: this service was restarted (crash, kill -9)
                    self.info["restarts"] = int(float(_text(restarts) or 0)) + 1
                    mapping["restarts"] = self.info["restarts"]
                self._own_hash = True
            if self.outages.down:  # this write ends an outage: its length goes in with it
                self.r.ping()
                self.outages.ok()
                mapping.update({k: self.c[k] for k in OUTAGE_FIELDS})
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(key, mapping=mapping)
            pipe.sadd(self.keys.services(), self.service)
            pipe.execute()
        except redis.RedisError:
            self.redis_errors += 1
            self.outages.failed()
            return False
        if "eos" in extra:
            end_wake.notify()  # `pktscope run` reads this at once instead of at its next look
        return True


def wait_until_ready(r: redis.Redis, keys: Keys, services: list[str], timeout: float) -> list[str]:
    """Wait until every named service of this run said ``ready``; return those that did not.

    An offline replay waits for this so that the services still importing and connecting do
    not compete with it for the CPU (interpreter start-up is 0.3 CPU s per service here).
    """
    began = time.monotonic()
    deadline = began + timeout
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
        # every millisecond of a replay's start waits here: closer looks while the others are
        # starting (they take some 50 ms after their fork), then as before
        time.sleep(0.005 if time.monotonic() < began + 0.5 else 0.02)


def wait_until_ended(
    r: redis.Redis | None, keys: Keys, receivers: list[str], timeout: float, stop: object = False
) -> list[str]:
    """After sending its end of stream, wait until every receiver of this run has handled it
    (its stats say ``eos``); return those that did not in time. A ``stop`` flag that turns true
    (SIGTERM while waiting: compose stops every service at once) ends the wait early.

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
        if not waiting or time.monotonic() >= deadline or stop:
            return waiting
        # Only the end of a stream waits here, for tens of milliseconds: looking every 5 ms (not
        # 20) ends this process sooner, and `pktscope run` waits for every process at its stop.
        time.sleep(0.005)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
