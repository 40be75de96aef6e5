"""The connection history's Redis writes (services/detector/connections.py): one script call per
(entity, label) pair and one index ZADD per frame; first seen only moves back, last seen only
forward, counts add up, whatever order frames (or two detectors) write in."""

from __future__ import annotations

from services.detector import connections
from services.detector.connections import ConnectionHistory
from services.detector.engine import _Batch


def _run(r, batch: _Batch) -> None:
    for name, args, kwargs in batch.plain:
        if name == "evalsha":
            r.execute_command("EVALSHA", *args)
        else:
            getattr(r, name)(*args, **kwargs)


def test_pairs_merge_in_any_order_with_one_script_call_each_and_one_index_write(rdb):
    sha = rdb.script_load(connections.PAIR)
    hist = ConnectionHistory("t")
    a = ("tcp", "10.0.0.1", 40000, "1.2.3.4", 443)
    b = ("tcp", "10.0.0.1", 40001, "1.2.3.4", 443)
    # a later frame first: flow b started at 200, seen at 250
    hist.add(b, "curl", "example.com", 250.0, 100, 1000, False, 200.0)
    hist.add(a, "wget", "example.org", 260.0, 5, 0, True, 255.0)
    batch = _Batch()
    hist.flush(batch, sha)
    assert [c[0] for c in batch.plain] == ["evalsha", "evalsha", "zadd"]
    _run(rdb, batch)
    # then an earlier one (another detector writing late): flow a of curl, 100 .. 150
    hist.add(a, "curl", "example.com", 150.0, 7, 70, True, 100.0)
    hist.add(b, "curl", "example.com", 240.0, 1, 1, True, 200.0)
    batch = _Batch()
    hist.flush(batch, sha)
    assert [c[0] for c in batch.plain] == ["evalsha", "zadd"]
    _run(rdb, batch)
    row = rdb.hgetall(connections.pair_key("t", "curl", "example.com"))
    assert float(row["first"]) == 100.0 and float(row["last"]) == 250.0
    assert (int(row["flows"]), int(row["bytes_out"]), int(row["bytes_in"])) == (2, 108, 1071)
    assert row["entity"] == "curl" and row["label"] == "example.com"
    assert rdb.zscore(connections.index_key("t"), "curl\x1fexample.com") == 250.0
    assert rdb.zscore(connections.index_key("t"), "wget\x1fexample.org") == 260.0
    # nothing this frame: nothing queued
    batch = _Batch()
    hist.flush(batch, sha)
    assert batch.plain == []
    rows = connections.read(rdb, "t")
    assert [(x["process"], x["destination"]) for x in rows] == [("wget", "example.org"), ("curl", "example.com")]
