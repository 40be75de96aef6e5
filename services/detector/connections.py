"""Connection history: for each (process, destination label), first and last seen, flows, bytes.

Answers "what did this program talk to?" (`pktscope connections`). The detector adds every
outbound flow event's byte deltas to its (entity, label) pair once the flow's destination label
is final (the same label as ``new_process_dest``); bytes of a flow still waiting for its name
are held per flow and added when the label is known. Writes are queued on the engine's
per-frame pipeline (one round trip per frame, as every other check).

Per frame: one script call per pair (``PAIR``: first, last, counts in one step) and one ZADD of
every pair's last seen into the index. Before, five commands a pair (EVAL of the first-seen
script, HSET, three HINCRBY) and a ZADD each were over half of the detector's Redis commands:
5.3k of 9.5k on sv-merged.pcap, 2026-12-03.

Redis (docs/redis.md):
  ``<prefix>:conn:index``                 sorted set: "<entity>\\x1f<label>" -> last seen
  ``<prefix>:conn:{<entity>}:<label>``    hash: entity, label, first, last, flows, bytes_out, bytes_in
Bounded: beyond ``max_pairs`` pairs the least recently seen are deleted (``trim``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import redis

MAX_PAIRS = 100_000
MAX_OPEN = 200_000  # flows whose bytes wait for their label
SEP = "\x1f"
# KEYS[1] the pair's hash. ARGV: entity label first last flows bytes_out bytes_in
# first only moves back and last only forward: two detectors (or frames) may write out of order
PAIR = r"""
local f = tonumber(redis.call('HGET', KEYS[1], 'first'))
if f == nil or tonumber(ARGV[3]) < f then redis.call('HSET', KEYS[1], 'first', ARGV[3]) end
local l = tonumber(redis.call('HGET', KEYS[1], 'last'))
if l == nil or tonumber(ARGV[4]) > l then redis.call('HSET', KEYS[1], 'last', ARGV[4]) end
redis.call('HSET', KEYS[1], 'entity', ARGV[1], 'label', ARGV[2])
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], 'flows', ARGV[5]) end
if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[1], 'bytes_out', ARGV[6]) end
if ARGV[7] ~= '0' then redis.call('HINCRBY', KEYS[1], 'bytes_in', ARGV[7]) end
return 0
"""


def index_key(prefix: str) -> str:
    return f"{prefix}:conn:index"


def pair_key(prefix: str, entity: str, label: str) -> str:
    return f"{prefix}:conn:{{{entity}}}:{label}"


class ConnectionHistory:
    """Per-frame accumulation of (entity, label) figures, queued as Redis commands."""

    def __init__(self, prefix: str, max_pairs: int = MAX_PAIRS) -> None:
        self.prefix = prefix
        self.max_pairs = max_pairs
        # flow key -> [bytes out, bytes in, counted] until the flow ends
        self._open: OrderedDict[tuple, list] = OrderedDict()
        # (entity, label) -> [first ts, last ts, new flows, bytes out, bytes in] for this frame
        self._frame: dict[tuple[str, str], list] = {}

    def add(
        self,
        key: tuple,
        entity: str,
        label: str,
        ts: float,
        d_out: int,
        d_in: int,
        ended: bool,
        started: float,
    ) -> None:
        """One outbound flow event; ``label`` is "" while the flow waits for its name;
        ``started``: the flow's first packet time (the pair's first seen)."""
        state = self._open.get(key)
        if state is None:
            state = self._open[key] = [0, 0, False]
            while len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
        state[0] += d_out
        state[1] += d_in
        if label:
            pair = self._frame.get((entity, label))
            if pair is None:
                pair = self._frame[(entity, label)] = [started, ts, 0, 0, 0]
            pair[0] = min(pair[0], started)
            pair[1] = max(pair[1], ts)
            if not state[2]:
                pair[2] += 1
                state[2] = True
            pair[3] += state[0]
            pair[4] += state[1]
            state[0] = state[1] = 0
        if ended:
            self._open.pop(key, None)

    def flush(self, batch: Any, pair_sha: str) -> None:
        """Queue this frame's figures on the engine's batch (``batch.command(name, *args)``);
        ``pair_sha``: the loaded ``PAIR`` script."""
        if not self._frame:
            return
        last_seen: dict[str, float] = {}
        for (entity, label), (first, last, flows, b_out, b_in) in self._frame.items():
            key = pair_key(self.prefix, entity, label)
            batch.command("evalsha", pair_sha, 1, key, entity, label, repr(first), repr(last), flows, b_out, b_in)
            last_seen[entity + SEP + label] = last
        batch.command("zadd", index_key(self.prefix), last_seen, gt=True)
        self._frame.clear()

    def trim(self, r: redis.Redis) -> int:
        """Delete the least recently seen pairs beyond ``max_pairs``; returns how many."""
        index = index_key(self.prefix)
        excess = r.zcard(index) - self.max_pairs
        if excess <= 0:
            return 0
        gone = [m for m, _ in r.zpopmin(index, excess)]
        pipe = r.pipeline(transaction=False)
        for member in gone:
            entity, _, label = member.partition(SEP)
            pipe.delete(pair_key(self.prefix, entity, label))
        pipe.execute()
        return len(gone)


def read(
    r: redis.Redis, prefix: str, since: float | None = None, process: str | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    """The stored pairs, newest first; ``process`` matches the exe path or its base name."""
    members = r.zrevrangebyscore(index_key(prefix), "+inf", since if since is not None else "-inf", 0, limit)
    pipe = r.pipeline(transaction=False)
    for member in members:
        entity, _, label = member.partition(SEP)
        pipe.hgetall(pair_key(prefix, entity, label))
    out = []
    for row in pipe.execute():
        if not row:
            continue
        entity = row.get("entity", "")
        if process and process not in (entity, entity.rsplit("/", 1)[-1]):
            continue
        out.append(
            {
                "process": entity,
                "destination": row.get("label", ""),
                "first": float(row.get("first", 0) or 0),
                "last": float(row.get("last", 0) or 0),
                "flows": int(row.get("flows", 0) or 0),
                "bytes_out": int(row.get("bytes_out", 0) or 0),
                "bytes_in": int(row.get("bytes_in", 0) or 0),
            }
        )
    return out
