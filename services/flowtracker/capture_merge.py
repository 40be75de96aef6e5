"""Several live captures: put the decoders' records in packet-time order across captures.

With ``--captures C`` each capture numbers its own packets (capture k: k + C, k + 2C, ...), so
``num % C`` names a record's capture and numbers from two captures say nothing about which
packet came first. The merge is therefore two-level:

1. per capture, a ``CaptureOrderMerge`` over the decoders puts that capture's records back in
   its packet order, exactly as with one capture (each (decoder, capture) pair is an input with
   its own records and ticks, forwarded by the decoder);
2. across captures, the records each part released are merged by packet time, up to the lowest
   watermark of the parts: a record leaves once every capture has passed its packet time.

Captures tick every decoder four times a second with the capture clock (services/capture/
service.py), so an idle capture's watermark keeps moving and never holds the others back.
Each capture's records keep their own order in the output (a merge, not a sort: one flow's
packets are never reordered); equal packet times go lowest capture first.

Bounded: past ``max_buffered`` records released by the parts but held for a silent capture,
the oldest half leaves anyway and ``forced`` counts it. With one capture the flow-tracker uses
``CaptureOrderMerge`` alone, unchanged.
"""

from __future__ import annotations

import heapq
import math
from operator import itemgetter

from services.flowtracker.merge import MAX_BUFFERED, NEVER, CaptureOrderMerge

_ts = itemgetter(1)


class CaptureTimeMerge:
    def __init__(self, decoders: int, captures: int, max_buffered: int = MAX_BUFFERED) -> None:
        self.expected = max(1, decoders)
        self.captures = max(1, captures)
        self.max_buffered = max_buffered
        self.parts = [CaptureOrderMerge(self.expected, max_buffered) for _ in range(self.captures)]
        self.ready: list[list] = [[] for _ in range(self.captures)]  # released by a part, held here
        self.finished: set[str] = set()
        self.watermark = NEVER
        self.highest = NEVER  # the service raises it from the end of stream's last packet time
        self._forced = 0

    # --- input --------------------------------------------------------------------------------
    def add(self, sender: str, records: list | tuple) -> None:
        """One RECORDS frame of ``sender``: all of one capture's batch (ValueError if not)."""
        if not records:
            return
        try:
            nums = [rec[0] for rec in records]
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError("records without packet numbers") from exc
        first = nums[0]
        if type(first) is not int:
            raise ValueError("records without packet numbers")
        k = first % self.captures
        c = self.captures
        for n in nums:
            if type(n) is not int or n % c != k:
                raise ValueError("records of several captures in one frame")
        self.parts[k].add(sender, records)

    def tick(self, sender: str, num: int, ts: float) -> None:
        """Capture ``num % C`` had handed out packets up to ``num``, the last at ``ts``."""
        self.parts[num % self.captures].tick(sender, num, ts)
        if ts > self.highest:
            self.highest = ts

    def finish(self, sender: str) -> None:
        """A decoder ended: it had every capture's end of stream."""
        self.finished.add(sender)
        for part in self.parts:
            part.finish(sender)

    @property
    def all_finished(self) -> bool:
        return len(self.finished) >= self.expected

    @property
    def buffered(self) -> int:
        return sum(p.buffered for p in self.parts) + sum(map(len, self.ready))

    @property
    def forced(self) -> int:
        return self._forced + sum(p.forced for p in self.parts)

    @property
    def resets(self) -> int:
        return sum(p.resets for p in self.parts)

    # --- output -------------------------------------------------------------------------------
    def release(self) -> list:
        """Records every capture has passed, in packet-time order; advances ``watermark``."""
        for k, part in enumerate(self.parts):
            out = part.release()
            if out:
                self.ready[k].extend(out)
            if part.highest > self.highest:
                self.highest = part.highest
        if self.all_finished:
            limit = math.inf
        else:
            limit = min(part.watermark for part in self.parts)
            held = sum(map(len, self.ready))
            if held > self.max_buffered:
                limit = self._forced_limit(limit)
        out = self._take(limit)
        mark = self.watermark
        if limit == math.inf:
            if self.highest > mark:
                mark = self.highest
        elif limit > mark:
            mark = limit
        self.watermark = mark
        return out

    def _take(self, limit: float) -> list:
        """From each capture, its records up to packet time ``limit`` (a prefix), merged by time."""
        runs = []
        for k, queue in enumerate(self.ready):
            if not queue:
                continue
            cut = 0
            for rec in queue:  # a prefix: a capture's own order is kept even if its clock stepped back
                if rec[1] > limit:
                    break
                cut += 1
            if cut == len(queue):
                runs.append(queue)
                self.ready[k] = []
            elif cut:
                runs.append(queue[:cut])
                del queue[:cut]
        if not runs:
            return []
        if len(runs) == 1:
            return runs[0]
        return list(heapq.merge(*runs, key=_ts))

    def drain(self) -> list:
        """Everything still waiting (a stop: no input will say more), in packet-time order."""
        for k, part in enumerate(self.parts):
            held = part.drain()
            if held:
                self.ready[k].extend(held)
        return self._take(math.inf)

    def _forced_limit(self, limit: float) -> float:
        """A capture is silent while the others pile up: let the oldest half of the backlog go."""
        times = sorted(rec[1] for queue in self.ready for rec in queue)
        forced_limit = max(limit, times[len(times) // 2]) if times else limit
        self._forced += sum(1 for t in times if limit < t <= forced_limit)
        return forced_limit
