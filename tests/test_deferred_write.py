"""Progress writes not waited for (shared/deferred_write.py): they land, in order, errors are not
lost, a Redis restart is survived, and a stats flush is never overtaken by one."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from shared.deferred_write import MAX_OWED, DeferredWrites
from shared.redis_keys import Keys
from shared.stats import ServiceStats
from tests.conftest import start_redis


def test_writes_land_in_order(rdb):
    w = DeferredWrites(rdb)
    for i in range(50):
        w.send("HSET", "h", "n", i, f"f{i}", i)
    w.drain()
    assert rdb.hget("h", "n") == "49"
    assert rdb.hlen("h") == 51


def test_an_error_reply_is_raised_by_a_later_write_or_drain(rdb):
    rdb.set("s", "a string")
    w = DeferredWrites(rdb)
    w.send("HSET", "s", "f", 1)  # WRONGTYPE, not waited for
    w.send("HSET", "h", "f", 1)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        w.drain()
    assert rdb.hget("h", "f") == "1"  # sent before the error was read: written all the same
    w.send("HSET", "h", "f", 2)  # the writer goes on with a new connection
    w.drain()
    assert rdb.hget("h", "f") == "2"


def test_an_error_reply_surfaces_within_max_owed_writes_without_a_drain(rdb):
    rdb.set("s", "a string")
    w = DeferredWrites(rdb)
    w.send("HSET", "s", "f", 1)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        for i in range(MAX_OWED + 1):
            w.send("HSET", "h", "n", i)


def test_replies_owed_stay_bounded(rdb):
    w = DeferredWrites(rdb)
    for i in range(10 * MAX_OWED):
        w.send("HSET", "h", "n", i)
        assert w._owed <= MAX_OWED
    w.drain()
    assert w._owed == 0 and rdb.hget("h", "n") == str(10 * MAX_OWED - 1)


def test_a_restarted_redis_is_an_error_once_then_written_again(tmp_path):
    proc, url = start_redis(tmp_path)
    r = redis.Redis.from_url(url, decode_responses=True)
    w = DeferredWrites(r)
    w.send("HSET", "h", "f", 1)
    w.drain()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(redis.RedisError):
        for _ in range(3):  # the first send may still go into the dead socket's buffer
            w.send("HSET", "h", "f", 2)
            w.drain()
    proc, url = start_redis(tmp_path)
    try:
        w.send("HSET", "h", "f", 3)
        w.drain()
        assert r.hget("h", "f") == "3"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_stats_flush_is_not_overtaken_by_a_deferred_progress_write(rdb):
    stats = ServiceStats("decoder-0", rdb, Keys("t"))
    for i in range(200):
        stats.c["packets_in"] = i
        stats.write_deferred({"packets_in": i, "next_seq": i})
        if i % 50 == 49:
            stats.c["packets_in"] = 1000 + i
            assert stats.flush()
            # the flush drained the progress write first, so its own value is the one left
            assert rdb.hget("t:stats:decoder-0", "packets_in") == str(1000 + i)
