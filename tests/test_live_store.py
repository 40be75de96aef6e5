"""The live view's stored records (services/detector/live_store.py): the JSON text is what
json.dumps writes, for open flows and for the history of ended ones, names from outside included."""

from __future__ import annotations

import json

from services.detector.live_store import LiveStore, as_map, record
from shared.flowevents import FIELDS
from shared.observe_keys import ObserveKeys


def _row(**values) -> tuple:
    base = dict.fromkeys(FIELDS)
    base.update(ev="start", fid=1, ts=10.5, proto=6, src="10.0.0.1", sport=40000, dst="93.184.216.34",
                dport=443, outbound=True, first=10.5, last=10.5, pkts_out=1, bytes_out=60, pkts_in=0,
                bytes_in=0, state="SYN_SENT", name="", name_src="")  # fmt: skip
    base.update(values)
    return tuple(base[f] for f in FIELDS)


def test_stored_records_are_json_dumps_text(rdb):
    keys = ObserveKeys("t")
    store = LiveStore(rdb, keys, lambda name: name.rsplit(".", 2)[-2] if name.count(".") >= 1 else "")
    rows = [
        _row(name="exämple.com"),
        _row(fid=2, sport=40001, name="evil\x1b[31m.example", ts=11.25, first=11.25, last=11.25),
        _row(fid=3, proto=17, sport=5353, dport=53, state="", name="dns.exämple.org", ts=12.0, first=12.0, last=12.0),
        _row(fid=4, sport=40002, outbound=False, src="93.184.216.34", dst="10.0.0.1", ts=13.0, first=13.0),
    ]
    for row in rows:
        store.observe(row, None)
    ended = _row(ev="end", reason="fin", ts=14.0, last=14.0, bytes_out=1e3 + 0.5, name="exämple.com")
    store.observe(ended, None)
    store.flush()
    stored = rdb.hgetall(keys.live_conns())
    assert len(stored) == 3  # the first row's flow ended
    expected = {}
    for row in rows[1:]:
        rec = record(row, None, store.label)
        expected[rec[0]] = json.dumps(rec, separators=(",", ":"))
    assert stored == expected
    assert all("\x1b" not in text for text in stored.values())  # control characters escaped
    history = rdb.zrange(keys.live_history(), 0, -1)
    assert history == [json.dumps(record(ended, None, store.label), separators=(",", ":"))]
    assert as_map(json.loads(history[0]))["reason"] == "fin"


def test_past_its_bound_the_least_recently_active_flow_leaves_the_view(rdb):
    """At ``max_live`` open flows a new one pushes out the one seen longest ago (not the first
    started: a flow seen again is the most recent), counted, and deleted from Redis if written."""
    keys = ObserveKeys("b")
    store = LiveStore(rdb, keys, lambda name: name, max_live=3)
    flows = [_row(fid=i, sport=40000 + i, ts=10.0 + i, first=10.0 + i, last=10.0 + i) for i in range(4)]
    for row in flows[:3]:
        store.observe(row, None)
    store.flush()
    assert len(rdb.hgetall(keys.live_conns())) == 3
    store.observe(_row(fid=0, sport=40000, ev="update", ts=20.0, first=10.0, last=20.0), None)  # flow 0 again
    store.observe(flows[3], None)  # a fourth: flow 1 is now the least recently active
    assert store.c["live.dropped"] == 1
    store.flush()
    stored = {json.loads(text)[5] for text in rdb.hgetall(keys.live_conns()).values()}  # source ports
    assert stored == {40000, 40002, 40003}
    store.observe(_row(fid=3, sport=40003, ev="end", reason="fin", ts=21.0, first=13.0, last=21.0), None)
    store.flush()
    assert {json.loads(text)[5] for text in rdb.hgetall(keys.live_conns()).values()} == {40000, 40002}


def test_a_backlog_of_ended_flows_is_written_before_the_interval(rdb):
    """FLUSH_BACKLOG ended flows go to the history at once (off a replay's end), and leave the
    open ones; an open flow that changed meanwhile waits for the interval's full write."""
    from services.detector.live_store import FLUSH_BACKLOG

    keys = ObserveKeys("k")
    store = LiveStore(rdb, keys, lambda name: name, interval=3600.0)
    store.maybe_flush(now=0.0)  # the first write; the next full one is an hour away
    starts = [_row(fid=i, sport=20000 + i, ts=1.0, first=1.0, last=1.0) for i in range(FLUSH_BACKLOG)]
    for row in starts:
        store.observe(row, None)
    store.flush()  # written as open
    assert rdb.hlen(keys.live_conns()) == FLUSH_BACKLOG
    still_open = _row(fid=99999, sport=19999, ts=2.0, first=2.0, last=2.0)
    store.observe(still_open, None)
    for i in range(FLUSH_BACKLOG - 1):
        store.observe(_row(fid=i, sport=20000 + i, ev="end", reason="idle", ts=3.0, first=1.0, last=1.0), None)
        store.maybe_flush(now=1.0)
    assert rdb.zcard(keys.live_history()) == 0  # one short of the backlog: nothing written yet
    store.observe(_row(fid=FLUSH_BACKLOG - 1, sport=20000 + FLUSH_BACKLOG - 1, ev="end", reason="idle", ts=3.0,
                       first=1.0, last=1.0), None)  # fmt: skip
    store.maybe_flush(now=1.0)
    assert rdb.zcard(keys.live_history()) == FLUSH_BACKLOG
    assert rdb.hlen(keys.live_conns()) == 0  # the ended ones left the open view; the new one waits
    assert store.c["live.flows_ended"] == FLUSH_BACKLOG
    store.maybe_flush(now=3601.0)
    (text,) = rdb.hvals(keys.live_conns())
    assert json.loads(text)[5] == 19999
