"""Put the decoders' records back in capture order before the flow table sees them.

Capture numbers every packet (``num``) and shards packets by flow, so each decoder's records
arrive in ``num`` order, but the decoders' frames interleave differently on every run. The
flow table's timers (idle ends, updates, sweeps) and its DNS name history are then fed in
capture order, exactly as with one decoder: the flow events, their order and the alerts are
the same for any number of decoders and any batch size.

A record may leave once every input has reached its number: an input reaches ``n`` when it
has sent a record numbered ``n`` or later, or a TICK saying capture had handed out ``n``
packets (capture ticks every decoder at least once a second of packet time, so an idle shard
never holds the others back for long). A finished input (EOS) holds nothing back.

Bounded: past ``max_buffered`` waiting records (an input that stopped talking without an
EOS, live), the oldest leave anyway and ``forced`` counts them; order is then best effort.
"""

from __future__ import annotations

import math
from operator import itemgetter

NEVER = -math.inf
_num = itemgetter(0)
MAX_BUFFERED = 300_000  # records; ~ 4096 packets x a few decoders in normal running


class CaptureOrderMerge:
    def __init__(self, expected: int, max_buffered: int = MAX_BUFFERED) -> None:
        self.expected = max(1, expected)
        self.max_buffered = max_buffered
        self.reached: dict[str, float] = {}  # input -> highest packet number it has passed
        self.waiting: dict[str, list] = {}  # input -> records not yet released, in num order
        self.finished: set[str] = set()
        self.buffered = 0
        self.watermark = NEVER  # packet time of everything released so far (ticks included)
        self.highest = NEVER  # the highest packet time seen on any input
        self._tick_times: list[tuple[float, float]] = []  # (num, ts) of ticks not yet passed
        self._flush_first: list = []  # records of an earlier epoch (capture restarted)
        self.forced = 0
        self.resets = 0

    # --- input --------------------------------------------------------------------------------
    def add(self, sender: str, records: list | tuple) -> None:
        """Records of one RECORDS frame from ``sender`` (in its capture order).

        Raises ValueError (nothing kept) when the frame's packet numbers are not increasing
        integers: such a frame is bad, and one bad number must not upset the merge.
        """
        if not records:
            return
        prev = NEVER
        try:
            for rec in records:  # one pass, no list of numbers (917k records on the 5x capture)
                n = rec[0]
                if type(n) is not int or n <= prev:
                    raise ValueError("records out of capture order")
                prev = n
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError("records without packet numbers") from exc
        if records[0][0] <= self.reached.get(sender, NEVER):
            self._new_epoch()
        queue = self.waiting.get(sender)
        if queue is None:
            queue = self.waiting[sender] = []
        queue.extend(records)
        self.buffered += len(records)
        self.reached[sender] = records[-1][0]

    def tick(self, sender: str, num: float, ts: float) -> None:
        """Capture had handed out ``num`` packets, the last at packet time ``ts``."""
        if num < self.reached.get(sender, NEVER):
            self._new_epoch()
        self.reached[sender] = num
        self._tick_times.append((num, ts))
        if ts > self.highest:
            self.highest = ts

    def finish(self, sender: str) -> None:
        self.finished.add(sender)
        self.reached.setdefault(sender, NEVER)

    def _new_epoch(self) -> None:
        """Packet numbers went backwards: capture restarted (live). What waits leaves now, in
        order, and the inputs start over; order across the restart is best effort."""
        self.resets += 1
        held = [rec for queue in self.waiting.values() for rec in queue]
        held.sort(key=_num)
        self._flush_first.extend(held)
        self.waiting = {}
        self.buffered = len(self._flush_first)
        self.reached = {s: math.inf for s in self.finished}
        self._tick_times = []

    @property
    def all_finished(self) -> bool:
        return len(self.finished) >= self.expected

    # --- output -------------------------------------------------------------------------------
    def bound(self) -> float:
        """The packet number every input has reached (records up to it may leave)."""
        if self.all_finished:
            return math.inf
        if len(self.reached) < self.expected:
            return NEVER
        live = [n for s, n in self.reached.items() if s not in self.finished]
        return min(live) if live else math.inf

    def release(self) -> list:
        """The records every input has passed, in capture order; advances ``watermark``."""
        limit = self.bound()
        if self.buffered > self.max_buffered and limit != math.inf:
            limit = self._forced_limit(limit)
        parts = []
        for sender, queue in self.waiting.items():
            if not queue or queue[0][0] > limit:
                continue
            if queue[-1][0] <= limit:
                parts.append(queue)
                self.waiting[sender] = []
            else:
                cut = _bisect_num(queue, limit)
                parts.append(queue[:cut])
                del queue[:cut]
        out: list
        if self._flush_first:
            out = self._flush_first
            self._flush_first = []
            merged = [rec for part in parts for rec in part]
            merged.sort(key=_num)
            out.extend(merged)
        elif not parts:
            out = []
        elif len(parts) == 1:
            out = parts[0]
        else:
            out = [rec for part in parts for rec in part]
            out.sort(key=_num)  # runs already sorted: timsort merges them in linear time, in C
        self.buffered -= len(out)
        mark = self.watermark
        if out:
            ts = out[0][1]
            for rec in out:  # max(map(_ts, out)), without a call per record in the compiled twin
                if rec[1] > ts:
                    ts = rec[1]
            if ts > self.highest:
                self.highest = ts
            if ts > mark:
                mark = ts
        ticks = self._tick_times
        if ticks:
            keep = []
            for num, ts in ticks:
                if num <= limit:
                    if ts > mark:
                        mark = ts
                else:
                    keep.append((num, ts))
            self._tick_times = keep
        if limit == math.inf and self.highest > mark:
            mark = self.highest
        self.watermark = mark
        return out

    def drain(self) -> list:
        """Everything still waiting, in capture order (a stop: no input will say more)."""
        self._new_epoch()
        self.resets -= 1  # not a restart of capture
        out, self._flush_first = self._flush_first, []
        self.buffered = 0
        return out

    def _forced_limit(self, limit: float) -> float:
        """An input is silent while the others pile up: let the oldest half of the backlog go."""
        nums = sorted(rec[0] for queue in self.waiting.values() for rec in queue)
        forced_limit = max(limit, nums[len(nums) // 2]) if nums else limit
        self.forced += sum(1 for n in nums if limit < n <= forced_limit)
        return forced_limit


def _bisect_num(queue: list, limit: float) -> int:
    lo, hi = 0, len(queue)
    while lo < hi:
        mid = (lo + hi) // 2
        if queue[mid][0] <= limit:
            lo = mid + 1
        else:
            hi = mid
    return lo


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("CaptureOrderMerge",))
