"""Packet-time watermarks per decoder: how far packet time has got on every input.

Each decoder sends its records (and capture's TICKs) in capture order, so the latest
timestamp seen from a decoder bounds what it can still send. Timers may only fire up to the
lowest of these marks: a decoder that is behind could still deliver packets of a flow that
looks idle from the others' point of view. A decoder that finished (EOS) no longer holds
the clock back. Until every expected decoder has spoken, the clock does not move at all.
"""

from __future__ import annotations

NEVER = float("-inf")
FOREVER = float("inf")


class Watermarks:
    def __init__(self, expected: int) -> None:
        self.expected = max(1, expected)
        self.marks: dict[str, float] = {}
        self.finished: set[str] = set()
        self.highest = NEVER

    def see(self, sender: str, ts: float) -> None:
        """Packet time ``ts`` reached ``sender`` (timestamps going backwards are ignored)."""
        if ts > self.marks.get(sender, NEVER):  # False for NaN: a bad timestamp cannot move time
            if ts == FOREVER:
                return
            self.marks[sender] = ts
            if ts > self.highest:
                self.highest = ts

    def finish(self, sender: str) -> None:
        self.finished.add(sender)
        self.marks.setdefault(sender, NEVER)

    @property
    def all_finished(self) -> bool:
        return len(self.finished) >= self.expected

    def low(self) -> float:
        """The packet time every input has passed: timers up to it are safe to fire."""
        if len(self.marks) < self.expected:
            return NEVER
        live = [ts for sender, ts in self.marks.items() if sender not in self.finished]
        if not live:
            return self.highest
        return min(live)
