"""A detector pool merges every sensor's flow-trackers by packet time; sensors come and go.

Like ``EventMerge`` (several flow-trackers of one host), an event is handled once every input
has passed its time, in the flow table's order. A pool does not know its sensors in advance:
an input is whoever sent a frame (``<sensor>/<flowtracker>``), and one that sent its end of
stream leaves. A sensor that goes silent (down, unreachable) must not hold every other back
for ever: once it has not been heard for ``silence`` wall seconds it no longer bounds the
merge (counted once per silence in ``stalled``); its later events are handled late, counted by
the engine as ``late_events``. Rows are released with their sender, so the engine knows which
sensor's entity they belong to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from services.detector.merge import NEVER, EventMerge, table_order


class PoolMerge(EventMerge):
    def __init__(self, silence: float, clock: Callable[[], float] = time.monotonic, **kw: int) -> None:
        super().__init__(1, **kw)
        self.silence = silence
        self.clock = clock
        self.heard: dict[str, float] = {}
        self.silent: set[str] = set()
        self.stalled = 0  # times a silent input was passed over
        self.ended = 0  # inputs that sent their end of stream

    def add(self, sender: str, rows: list) -> None:
        self._heard(sender)
        super().add(sender, rows)

    def tick(self, sender: str, ts: float) -> None:
        self._heard(sender)
        super().tick(sender, ts)

    def _heard(self, sender: str) -> None:
        self.heard[sender] = self.clock()
        self.silent.discard(sender)
        self.reached.setdefault(sender, NEVER)

    def finish(self, sender: str) -> None:
        """The input ended: it bounds nothing any more (what it sent is still released in order)."""
        self.reached.pop(sender, None)
        self.heard.pop(sender, None)
        self.silent.discard(sender)
        self.ended += 1

    @property
    def all_finished(self) -> bool:
        return False  # a pool runs until it is stopped

    @property
    def inputs(self) -> int:
        return len(self.reached)

    def bound(self) -> float:
        now = self.clock()
        live = []
        for sender, ts in self.reached.items():
            if now - self.heard.get(sender, now) <= self.silence:
                live.append(ts)
            elif sender not in self.silent:
                self.silent.add(sender)
                self.stalled += 1
        if live:
            return min(live)
        return math.inf if self.buffered else NEVER  # everyone silent: what waits goes

    def release_pairs(self) -> list[tuple[list, str]]:
        """(row, sender) pairs every live input has passed, in the flow table's order."""
        bound = self.bound()
        if self.buffered > self.max_buffered and bound != math.inf:
            times = sorted(r[2] for q in self.waiting.values() for r in q)
            forced = times[len(times) // 2]
            self.forced += sum(1 for t in times if bound <= t <= forced)
            bound = math.nextafter(forced, math.inf)
        out: list[tuple[list, str]] = []
        for sender, queue in self.waiting.items():
            cut = 0
            while cut < len(queue) and queue[cut][2] < bound:
                cut += 1
            if cut:
                out.extend((row, sender) for row in queue[:cut])
                del queue[:cut]
        if len(out) > 1:
            out.sort(key=lambda pair: table_order(pair[0]))
        self.buffered -= len(out)
        for sender in [s for s, q in self.waiting.items() if not q and s not in self.reached]:
            del self.waiting[sender]  # an ended input's queue, emptied
        return out
