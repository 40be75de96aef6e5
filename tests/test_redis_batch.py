"""shared/redis_batch.py: a batch in one round trip, replies in order, errors in place, and a
connection that failed never handed out again."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from shared.redis_batch import run_batch
from shared.redis_conn import connect
from tests.conftest import start_redis


def test_replies_come_in_order_with_errors_in_their_place(rdb):
    sha = rdb.script_load("return {ARGV[1], #KEYS}")
    replies = run_batch(
        rdb,
        [
            ("SET", "k", "v"),
            ("EVALSHA", sha, 1, "k", "x"),
            ("INCR", "k"),  # a string that is no integer: an error reply
            ("EVALSHA", "0" * 40, 0),  # a script the server does not have
            ("GET", "k"),
            ("HSET", "h", "a", 1, "b", 2.5),
        ],
    )
    assert replies[0] == "OK"  # as the server said it (no callback turns it into True)
    assert replies[1] == ["x", 1]
    assert isinstance(replies[2], redis.ResponseError)
    assert isinstance(replies[3], redis.exceptions.NoScriptError)
    assert replies[4] == "v" and replies[5] == 2
    assert run_batch(rdb, []) == []
    assert rdb.hgetall("h") == {"a": "1", "b": "2.5"}


def test_the_same_answers_as_redis_py_pipelines(rdb):
    commands = [("SADD", "s", "a", "b"), ("SCARD", "s"), ("ZADD", "z", 1.5, "m"), ("ZSCORE", "z", "m"), ("DEL", "s")]
    mine = run_batch(rdb, commands)
    rdb.flushdb()
    pipe = rdb.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    theirs = pipe.execute()
    assert [str(x) for x in mine] == [str(x) for x in theirs]


def test_a_dead_server_raises_and_its_connection_is_not_reused(tmp_path):
    proc, url = start_redis(tmp_path)
    r = connect(url)
    assert run_batch(r, [("PING",)]) == ["PONG"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        run_batch(r, [("SET", "a", 1), ("GET", "a")])
    assert all(c._sock is None for c in r.connection_pool._available_connections)
    proc, url2 = start_redis(tmp_path)
    try:
        assert url2 == url
        assert run_batch(r, [("SET", "a", 1), ("GET", "a")]) == ["OK", "1"]  # a fresh connection
    finally:
        proc.terminate()
        proc.wait()
