"""An upstream killed between its final stats (``eos``) and its end-of-stream frame: the frame
never comes, and supervisord restarts the upstream after the end. Its receiver, idle, must take
the stats' word for the end (``ended_upstream(..., taken_over=True)``) once the successor has
replaced the pid, and not before: an upstream still alive is only slow to send the frame."""

from __future__ import annotations

import os

from shared import stats as stats_module
from shared.continuity import Continuity, ended_upstream
from shared.frames import SequenceGaps
from shared.redis_keys import Keys
from shared.stats import ServiceStats


def test_the_final_stats_name_the_process_that_ended_the_stream(rdb, monkeypatch):
    monkeypatch.setattr(stats_module, "RUN_ID", "r1")
    st = ServiceStats("flowtracker", rdb, Keys("t"))
    st.flush()
    assert rdb.hget("t:stats:flowtracker", "eos_pid") is None
    st.flush_final(eos=1)
    assert rdb.hget("t:stats:flowtracker", "eos_pid") == str(os.getpid())


def test_a_receiver_that_was_not_restarted_believes_only_an_ended_upstream_since_replaced(rdb, monkeypatch):
    monkeypatch.setattr(stats_module, "RUN_ID", "r1")
    me = ServiceStats("detector", rdb, Keys("t"))
    key = "t:stats:flowtracker"
    rdb.hset(key, mapping={"run_id": "r1", "eos": 1, "eos_pid": 100, "pid": 100})
    assert ended_upstream(me, ["flowtracker"], taken_over=True) == []  # alive: the frame may come
    assert ended_upstream(me, ["flowtracker"]) == ["flowtracker"]  # (a restarted receiver believes it)
    rdb.hset(key, "pid", 200)  # the successor's first stats write
    assert ended_upstream(me, ["flowtracker"], taken_over=True) == ["flowtracker"]
    rdb.hset(key, "run_id", "r0")
    assert ended_upstream(me, ["flowtracker"], taken_over=True) == []  # another run's end is not ours
    rdb.delete(key)
    rdb.hset(key, mapping={"run_id": "r1", "pid": 300, "eos_pid": 100})  # no eos: still sending
    assert ended_upstream(me, ["flowtracker"], taken_over=True) == []


def test_a_successor_of_an_ended_predecessor_knows_it_and_does_not_take_over(rdb, monkeypatch):
    monkeypatch.setattr(stats_module, "RUN_ID", "r1")
    first = ServiceStats("capture", rdb, Keys("t"))
    first.c["frames_out"] = 10
    first.flush_final(eos=1)
    cont = Continuity(ServiceStats("capture", rdb, Keys("t")), SequenceGaps(), ("frames_out",))
    assert cont.resume() is None
    assert cont.ended_before and not cont.restarted
