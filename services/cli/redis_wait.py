"""`pktscope run`'s Redis calls: waited out through an outage (paused, restarting, failing over).

The run's Redis is where the services report and the alerts are kept; when it stops answering,
the pipeline waits for it and so does the command that watches the pipeline: it says so once,
retries with backoff, and says how long it lasted when Redis answers again.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from shared.outages import Outages
from shared.redis_conn import UNAVAILABLE, recover

T = TypeVar("T")


class PatientRedis:
    def __init__(self, r: redis.Redis, where: str, stopped: Callable[[], bool]) -> None:
        self.r = r
        self.where = where  # the URL with its password redacted, for messages
        self.stopped = stopped
        self.counters: Counter = Counter()
        self.outages = Outages(self.counters)

    def call(self, fn: Callable[[redis.Redis], T], give_up: Callable[[], bool] | None = None) -> T | None:
        """``fn(r)`` once Redis answers; None if stopped (Ctrl-C) or ``give_up()`` first."""
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                result = fn(self.r)
            except UNAVAILABLE as exc:
                if not self.outages.down:
                    print(
                        f"pktscope: Redis at {self.where} is not answering ({exc}); waiting for it",
                        file=sys.stderr,
                    )
                self.outages.failed()
                recover(self.r)
                if self.stopped() or (give_up is not None and give_up()):
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            was_down = self.outages.down
            self.outages.slow(started)
            if was_down:
                print(
                    f"pktscope: Redis answered again after "
                    f"{self.counters['redis_outage_longest_ms'] / 1000:.1f} s (longest outage so far)",
                    file=sys.stderr,
                )
            return result

    def summary(self) -> dict[str, Any]:
        return {k: self.counters[k] for k in ("redis_outages", "redis_outage_ms", "redis_outage_longest_ms")}
