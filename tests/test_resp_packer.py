"""shared/resp_packer.py: the same bytes on the wire as redis-py's own packer, its errors kept."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Connection

from shared.redis_conn import connect
from shared.resp_packer import DirectPacker

COMMANDS = [
    ("EVALSHA", "a" * 40, 3, "P:known:x", "P:cool:x", "P:alerts", "host:10.0.0.1", "example.com",
     1700000000.123, 86400, 3600, "new_process_dest", '{"a":1}', 1000),
    ("SET", "k", 0.1),
    ("SET", "k", 1e20),
    ("SET", "k", -0.0),
    ("SET", "k", float("inf")),
    ("SET", "k", 12345678901234567890123),
    ("SET", "k", -7),
    ("SET", "k", "é\u2603"),
    ("SET", b"\x00\xff", b"\r\n"),
    ("SET", "k", ""),
    ("HSET", "h", "f", 2**63 - 1),
    ("CLIENT SETNAME", "pktscope"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
]  # fmt: skip


def _joined(chunks: list) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: f"{a[0]}:{type(a[-1]).__name__}")
def test_packs_exactly_as_redis_py_does(args):
    reference = Connection()._command_packer  # redis-py's default (hiredis) packer
    assert _joined(DirectPacker().pack(*args)) == _joined(reference.pack(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_a_type_redis_py_refuses_gets_its_error(bad):
    with pytest.raises(redis.DataError):
        DirectPacker().pack("SET", "k", bad)


def test_a_real_server_reads_what_it_packs(redis_url):
    r = connect(redis_url)
    assert isinstance(r.connection_pool.connection_kwargs["command_packer"], DirectPacker)
    pipe = r.pipeline(transaction=False)
    pipe.set("f", 0.1)
    pipe.set("u", "é\u2603")
    pipe.hset("h", mapping={"a": 1, "b": 2.5})
    pipe.eval("return {ARGV[1], ARGV[2], #KEYS}", 2, "k1", "k2", 1.25, "x y")
    results = pipe.execute()
    assert results[-1] == ["1.25", "x y", 2]
    assert r.get("f") == "0.1"
    assert r.get("u") == "é\u2603"
    assert r.hgetall("h") == {"a": "1", "b": "2.5"}
    r.client_setname("pktscope-test")  # a two-word command goes through redis-py's packer
    assert r.client_getname() == "pktscope-test"
    with pytest.raises(redis.DataError):
        r.set("k", True)
