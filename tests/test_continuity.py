"""Progress a restarted stage takes over (shared/continuity.py): written after each frame, and
carried by every stats write too, so counters are never newer than the sequence numbers beside
them (when progress was written every 10 ms, a restarted decoder counted frames its predecessor
had handled as lost, and a replay that lost nothing said "incomplete")."""

from __future__ import annotations

from shared.continuity import Continuity
from shared.frames import SequenceGaps
from shared.redis_keys import Keys
from shared.stats import ServiceStats


def test_a_stats_write_carries_the_progress_of_the_frame_in_hand(rdb):
    stats = ServiceStats("decoder-0", rdb, Keys("t"))
    gaps = SequenceGaps()
    cont = Continuity(stats, gaps, ("packets_in", "frames_in"))
    seqs = [0]
    cont.progress(seqs)
    for seq in range(1, 40):  # frames taken in since the last progress write (none in between)
        stats.c["frames_in"] += 1
        stats.c["packets_in"] += 512
        stats.c["frames_lost"] += gaps.see("capture", seq)
        seqs[0] += 1
    stats.flush()  # the periodic stats write
    h = rdb.hgetall("t:stats:decoder-0")
    assert int(h["packets_in"]) == 39 * 512 and int(h["frames_in"]) == 39
    assert int(h["seq.capture"]) == 39  # as new as the counters
    assert int(h["next_seq"]) == int(h["next_seq.0"]) == 39
    assert int(h["frames_lost"]) == 0


def test_a_successor_takes_over_what_the_last_write_said(rdb, monkeypatch):
    from shared import stats as stats_module

    monkeypatch.setattr(stats_module, "RUN_ID", "run-1")
    first = ServiceStats("decoder-0", rdb, Keys("t"))
    cont = Continuity(first, SequenceGaps(), ("packets_in",))
    first.flush()
    first.c["packets_in"] = 4096
    cont.gaps.see("capture", 7)
    cont.progress([3])
    first.flush()
    # the successor (same run, another process) reads it back
    second = ServiceStats("decoder-0", rdb, Keys("t"))
    gaps = SequenceGaps()
    again = Continuity(second, gaps, ("packets_in",))
    assert again.resume() == 4  # one past the last sequence number written + 1
    assert again.restarted and second.c["packets_in"] == 4096 and gaps.last == {"capture": 7}
    assert gaps.see("capture", 8) == 0  # the next frame is no gap
