"""Merge the flow-tracker shards' events into one packet-time order.

Each flow-tracker shard sends its events in (time, flow key) order and, after each release,
a TICK with its release horizon (every event before it has been sent). An event may be
handled once every shard has passed its time; events of one time are then ordered by the
flow key exactly as one flow-tracker orders them (the table's heap key), so the detector sees
the same sequence with any number of shards. Only used with ``--flowtrackers`` above 1.
"""

from __future__ import annotations

import math
import socket
from operator import itemgetter

NEVER = -math.inf
MAX_BUFFERED = 500_000  # events; past it the oldest leave anyway (counted in ``forced``)
_ts = itemgetter(2)  # flow-event row: FIELDS[2] is ts


def _addr(text: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, TypeError, ValueError):
        return b""


def table_order(row: list) -> tuple:
    """(ts, the flow table's normalised key): how a single flow-tracker orders its events."""
    src, sport, dst, dport = _addr(row[5]), row[6], _addr(row[7]), row[8]
    if (src, sport) <= (dst, dport):
        return row[2], (row[3], src, sport, dst, dport)
    return row[2], (row[3], dst, dport, src, sport)


class EventMerge:
    def __init__(self, shards: int, max_buffered: int = MAX_BUFFERED) -> None:
        self.shards = max(1, shards)
        self.max_buffered = max_buffered
        self.reached: dict[str, float] = {}
        self.waiting: dict[str, list] = {}
        self.finished: set[str] = set()
        self.buffered = 0
        self.forced = 0

    def add(self, sender: str, rows: list) -> None:
        """A FLOWS frame's rows (in the shard's order); raises ValueError for rows without a time."""
        try:
            times = [float(r[2]) for r in rows]
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError("flow-event rows without a time") from exc
        if not rows:
            return
        self.waiting.setdefault(sender, []).extend(rows)
        self.buffered += len(rows)
        self.reached[sender] = max(self.reached.get(sender, NEVER), times[-1])

    def tick(self, sender: str, ts: float) -> None:
        if ts > self.reached.get(sender, NEVER):
            self.reached[sender] = ts

    def finish(self, sender: str) -> None:
        self.finished.add(sender)
        self.reached.setdefault(sender, NEVER)

    @property
    def all_finished(self) -> bool:
        return len(self.finished) >= self.shards

    def bound(self) -> float:
        """Events strictly before this time may be handled."""
        if self.all_finished:
            return math.inf
        if len(self.reached) < self.shards:
            return NEVER
        live = [t for s, t in self.reached.items() if s not in self.finished]
        return min(live) if live else math.inf

    def release(self) -> list:
        bound = self.bound()
        if self.buffered > self.max_buffered and bound != math.inf:
            times = sorted(r[2] for q in self.waiting.values() for r in q)
            forced = times[len(times) // 2]
            self.forced += sum(1 for t in times if bound <= t <= forced)
            bound = math.nextafter(forced, math.inf)
        out: list = []
        for queue in self.waiting.values():
            if not queue or queue[0][2] >= bound:
                continue
            cut = len(queue)
            if queue[-1][2] >= bound:
                lo, hi = 0, len(queue)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if queue[mid][2] < bound:
                        lo = mid + 1
                    else:
                        hi = mid
                cut = lo
            out.extend(queue[:cut])
            del queue[:cut]
        if len(out) > 1:
            out.sort(key=table_order)  # stable: one flow's events at one time keep their order
        self.buffered -= len(out)
        return out
