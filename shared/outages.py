"""Redis outages as a service saw them: how many, how long, the longest.

Every part of a process that talks to Redis reports each failed and each successful call to one
``Outages`` (the stats writer, the detector's decision loop). An outage runs from the first
failure to the next success; its length lands in the service's stats hash (``redis_outages``,
``redis_outage_ms``, ``redis_outage_longest_ms``) with the first write that gets through, and
``pktscope status`` shows them.
"""

from __future__ import annotations

import time
from collections import Counter


class Outages:
    def __init__(self, counters: Counter) -> None:
        self.c = counters
        self.since: float | None = None  # monotonic time of the first failure of the open outage

    def failed(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def ok(self) -> None:
        if self.since is None:
            return
        ms = int((time.monotonic() - self.since) * 1000)
        self.since = None
        c = self.c
        c["redis_outages"] += 1
        c["redis_outage_ms"] += ms
        if ms > c["redis_outage_longest_ms"]:
            c["redis_outage_longest_ms"] = ms

    def slow(self, started: float, threshold: float = 1.0) -> None:
        """A call that got its answer only after ``threshold`` seconds (a paused server, with no
        socket timeout so that nothing is sent twice) was an outage from ``started``."""
        if self.since is None and time.monotonic() - started >= threshold:
            self.since = started
        self.ok()

    @property
    def down(self) -> bool:
        return self.since is not None
