"""The join: which socket-owner fact belongs to a flow, by 5-tuple and time.

Facts arrive from procwatch (one per socket event: connect, listen, send); flows arrive from the
flow-tracker, usually later, and often after the process has exited. Each fact is stored under
its protocol and local port (ICMP and raw sockets under their protocol alone, since ICMP flows
have no ports). A lookup takes the facts of that key that fit the flow -- the same local
address or a wildcard one, the same peer when the fact has one -- and born no later than the
flow's first packet plus ``slack`` (a fact is written when connect(2) returns, or just after a
datagram left), and picks the one born closest to that packet, so a port reused by another
program later does not take over an earlier flow, and vice versa. A fact is born when its
socket is first seen ("first"); a send seen again only moves its "ts" on.

Closest, not the newest within the slack: UDP gives a freed port to the next socket at once, so
short-lived programs sending to one peer (a resolver, a collector) can reuse each other's port
within milliseconds. The newest fact within 2 s then named the later program for the earlier
one's flow; the earlier socket's fact is born microseconds after its packet, the later one's
only when that program sends.

Bounded: at most ``max_facts`` facts in all (oldest dropped first) and ``per_key`` per key.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SLACK = 2.0  # seconds a fact may be stamped after the flow's first packet (fact written at connect's end)
MAX_FACTS = 131072
PER_KEY = 16
_PORTLESS = (ICMP, ICMP6)


def _key(proto: int, lport: int, raw: bool = False) -> tuple[int, int]:
    return (proto, 0) if proto in _PORTLESS or raw or proto not in (TCP, UDP) else (proto, lport)


class SocketOwners:
    """``add(fact)``; ``lookup(proto, lip, lport, rip, rport, at) -> fact | None``."""

    def __init__(self, max_facts: int = MAX_FACTS, per_key: int = PER_KEY, slack: float = SLACK) -> None:
        self.max_facts = max_facts
        self.per_key = per_key
        self.slack = slack
        self.counters: Counter[str] = Counter()
        self._facts: OrderedDict[tuple[int, int], deque[dict[str, Any]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, fact: dict[str, Any]) -> None:
        try:
            key = _key(int(fact["proto"]), int(fact["lport"]), fact.get("sock_type") == 3)
        except (KeyError, TypeError, ValueError):
            self.counters["bad_facts"] += 1
            return
        facts = self._facts.get(key)
        if facts is None:
            facts = self._facts[key] = deque()
        else:
            self._facts.move_to_end(key)
            for old in facts:  # the same socket seen again (a send refresh): update its time only
                if _same_socket(old, fact):
                    old["ts"] = max(old["ts"], fact["ts"])
                    return
        fact["first"] = fact["ts"]
        facts.append(fact)
        self._count += 1
        if len(facts) > self.per_key:
            facts.popleft()
            self._count -= 1
        while self._count > self.max_facts:
            _old_key, old = next(iter(self._facts.items()))
            old.popleft()
            self._count -= 1
            self.counters["evicted"] += 1
            if not old:
                del self._facts[_old_key]

    def lookup(
        self, proto: int, lip: str, lport: int, rip: str = "", rport: int = 0, at: float | None = None
    ) -> dict[str, Any] | None:
        """The owner fact of a flow's local end at time ``at`` (None: newest of any time)."""
        facts = self._facts.get(_key(proto, lport))
        if not facts and proto not in (TCP, UDP):
            facts = None
        if not facts:
            return None
        limit = None if at is None else at + self.slack
        best = None
        best_score = (-float("inf"), -1)
        for fact in facts:
            first = fact["first"]
            if limit is not None and first > limit:
                continue
            flip, frip = fact.get("lip", ""), fact.get("rip", "")
            if flip and flip != lip:
                continue
            if proto in (TCP, UDP):
                if frip and (frip != rip or fact.get("rport", 0) != rport):
                    continue
            elif frip and frip != rip:
                continue
            # born closest to the first packet (with no time: the newest); at a tie an exact peer
            score = (fact["ts"] if at is None else -abs(first - at), 1 if frip else 0)
            if score > best_score:
                best, best_score = fact, score
        return best


def _same_socket(a: dict[str, Any], b: dict[str, Any]) -> bool:
    pa, pb = a.get("proc") or {}, b.get("proc") or {}
    return (
        pa.get("pid") == pb.get("pid")
        and pa.get("started") == pb.get("started")
        and a.get("lip") == b.get("lip")
        and a.get("rip") == b.get("rip")
        and a.get("rport") == b.get("rport")
        and a.get("kind") == b.get("kind")
    )
