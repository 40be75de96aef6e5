"""Bounded and fast under floods (issue 10): the cooldown is a sorted set trimmed in O(log n) at
its cap, and the cap is counted when it bites. Real redis-server, the detector's own scripts."""

from __future__ import annotations

import json

from services.detector import lua
from services.detector.keys import DetectorKeys

KEYS = DetectorKeys("flood")
ENTITY = "host:10.0.0.1"
COOLDOWN = 3600.0


def _novel(rdb, sha: str, label: str, ts: float, cap: int) -> list:
    """One CHECK_NOVEL call: is ``label`` a new destination of ENTITY at packet time ``ts``?"""
    alert = json.dumps({"kind": "new_process_dest", "entity": ENTITY, "destination": label})
    return rdb.evalsha(
        sha,
        3,
        KEYS.cooldown(ENTITY),
        KEYS.entity_set(ENTITY, "dest"),
        KEYS.alerts(),
        "0", repr(ts), repr(COOLDOWN), cap, 100_000, "new_process_dest", 1,
        "s", label, "", f"dest:{label}", alert,
    )  # fmt: skip


def test_a_flood_of_new_destinations_keeps_alerting_within_the_cap_and_counts_it(rdb):
    sha = rdb.script_load(lua.CHECK_NOVEL)
    cap = 200
    capped = 0
    for i in range(1000):  # every one new, all within one cooldown: nothing can expire
        reply = _novel(rdb, sha, f"198.51.{i // 250}.{i % 250}", 1e9 + i, cap)
        assert reply[0] == lua.ALERTED
        if len(reply) % 2 == 0:
            capped += reply[-1]
    assert rdb.type(KEYS.cooldown(ENTITY)) == "zset"
    assert rdb.zcard(KEYS.cooldown(ENTITY)) == cap
    assert rdb.scard(KEYS.entity_set(ENTITY, "dest")) == cap
    # each call past the cap pushed out one set member and one cooldown entry
    assert capped == 2 * (1000 - cap)
    assert rdb.xlen(KEYS.alerts()) == 1000
    # the survivors are the newest: the oldest stamps went first
    oldest = rdb.zrange(KEYS.cooldown(ENTITY), 0, 0, withscores=True)[0][1]
    assert oldest == 1e9 + 1000 - cap


def test_entries_whose_cooldown_is_over_go_first_and_are_not_counted(rdb):
    sha = rdb.script_load(lua.CHECK_NOVEL)
    cap = 50
    for i in range(cap):
        _novel(rdb, sha, f"a{i}", 1e9 + i, cap)
    later = 1e9 + COOLDOWN + 100  # every earlier stamp's cooldown is over
    reply = _novel(rdb, sha, "fresh", later, cap)
    # only the destination set's cap bit (one member made room); no cooldown entry was pushed out
    assert reply[0] == lua.ALERTED and len(reply) % 2 == 0 and reply[-1] == 1
    assert rdb.zrange(KEYS.cooldown(ENTITY), 0, -1) == ["dest:fresh"]


def test_a_cooldown_hash_of_an_older_version_becomes_the_sorted_set(rdb):
    sha = rdb.script_load(lua.CHECK_NOVEL)
    rdb.hset(KEYS.cooldown(ENTITY), mapping={"dest:old.example": "1000000000.000000"})
    rdb.sadd(KEYS.entity_set(ENTITY, "dest"), "seed")
    reply = _novel(rdb, sha, "new.example", 1e9 + 10, 100)
    assert reply[0] == lua.ALERTED
    assert rdb.type(KEYS.cooldown(ENTITY)) == "zset"
    assert rdb.zscore(KEYS.cooldown(ENTITY), "dest:old.example") == 1e9
    # the migrated entry still holds its cooldown: the same label, removed and seen again, is quiet
    rdb.srem(KEYS.entity_set(ENTITY, "dest"), "old.example")
    assert _novel(rdb, sha, "old.example", 1e9 + 20, 100)[0] == lua.COOLDOWN
