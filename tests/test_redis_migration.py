"""A state directory from before AOF (an RDB file only) keeps its data: shared/redis_server.py."""

from __future__ import annotations

import redis

from shared.processes import wait_or_kill
from shared.redis_server import has_aof, migrate_to_aof, needs_migration, start_redis_server


def test_an_rdb_only_state_directory_is_migrated_once_and_keeps_its_data(short_tmp):
    data = short_tmp / "state"
    data.mkdir()
    assert not needs_migration(data) and not migrate_to_aof(data)  # empty: nothing to do
    proc, url = start_redis_server(short_tmp / "old.sock", data, "pktscope.rdb", aof=False)
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        r.hset("P:baseline", mapping={"host:10.0.0.1": "1"})
        r.save()
    finally:
        proc.terminate()
        wait_or_kill(proc, 10)
    assert needs_migration(data) and not has_aof(data)
    assert migrate_to_aof(data)
    assert has_aof(data) and not needs_migration(data)
    proc, url = start_redis_server(short_tmp / "new.sock", data, "pktscope.rdb", aof=True)
    try:
        assert redis.Redis.from_url(url, decode_responses=True).hgetall("P:baseline") == {"host:10.0.0.1": "1"}
    finally:
        proc.terminate()
        wait_or_kill(proc, 10)
    assert not migrate_to_aof(data)  # once only
