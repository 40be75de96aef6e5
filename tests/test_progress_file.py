"""Progress in a memory-mapped file (shared/progress_file.py): it outlives a kill -9 of its writer,
a successor takes it over in place of the older stats hash, and damage reads as nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shared.continuity import Continuity, progress_path
from shared.frames import SequenceGaps
from shared.progress_file import FILE_SIZE, ProgressFile, ProgressTooLarge, read_progress
from shared.redis_keys import Keys
from shared.stats import ServiceStats
from tests.conftest import ROOT

WRITER = """
import sys
from shared.progress_file import ProgressFile
f = ProgressFile(sys.argv[1])
n = 0
while True:
    n += 1
    f.write({"n": n, "pad": "x" * (n % 300), "seq.decoder-0": n * 3})
    if n == 1000:
        print("going", flush=True)
"""


def test_a_writer_killed_mid_stream_leaves_its_last_complete_write(tmp_path):
    path = tmp_path / "p" / "decoder-0.progress"
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "going"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        got = read_progress(path)
        assert got is not None and got["n"] >= 1000
        assert got["seq.decoder-0"] == 3 * got["n"] and got["pad"] == "x" * (got["n"] % 300)


def test_nothing_is_read_before_the_first_write_or_from_a_damaged_file(tmp_path):
    path = tmp_path / "x.progress"
    assert read_progress(path) is None
    f = ProgressFile(path)
    assert read_progress(path) is None  # made, never written
    f.write({"a": 1})
    f.write({"a": 2})
    assert read_progress(path) == {"a": 2}
    with pytest.raises(ProgressTooLarge):
        f.write({"big": "y" * 40_000})
    assert read_progress(path) == {"a": 2}  # the refused write changed nothing
    f.close()
    data = bytearray(path.read_bytes())
    data[0:4] = b"JUNK"
    path.write_bytes(bytes(data))
    assert read_progress(path) is None
    path.write_bytes(b"\x00" * (FILE_SIZE // 2))
    assert read_progress(path) is None


def test_a_successor_takes_the_file_over_the_older_stats_hash(rdb, tmp_path, monkeypatch):
    from shared import stats as stats_module

    monkeypatch.setattr(stats_module, "RUN_ID", "run-7")
    path = progress_path(tmp_path, "decoder-0")
    first = ServiceStats("decoder-0", rdb, Keys("t"))
    gaps = SequenceGaps()
    cont = Continuity(first, gaps, ("packets_in", "frames_in"), path)
    first.flush()
    for seq in range(1, 101):
        first.c["frames_in"] += 1
        first.c["packets_in"] += 512
        gaps.see("capture", seq)
        cont.progress([seq])
        if seq == 40:
            first.flush()  # the hash is left at frame 40; frames 41-100 are in the file only
    assert rdb.hget("t:stats:decoder-0", "next_seq") == "40"
    second = ServiceStats("decoder-0", rdb, Keys("t"))
    again_gaps = SequenceGaps()
    again = Continuity(second, again_gaps, ("packets_in", "frames_in"), path)
    # the file says the predecessor was between frames: it sent nothing past next_seq 100
    assert again.resume() == 100 and again.next_seqs(1) == [100]
    assert second.c["frames_in"] == 100 and second.c["packets_in"] == 100 * 512
    assert again_gaps.last == {"capture": 100}


def test_a_successor_of_a_sender_killed_while_handling_a_frame_numbers_past_what_it_may_have_sent(
    rdb, tmp_path, monkeypatch
):
    from shared import stats as stats_module

    monkeypatch.setattr(stats_module, "RUN_ID", "run-8")
    path = progress_path(tmp_path, "flowtracker")
    first = ServiceStats("flowtracker", rdb, Keys("t"))
    cont = Continuity(first, SequenceGaps(), ("frames_in",), path)
    first.flush()
    cont.handling()  # before any progress: nothing to mark
    assert read_progress(path) is None
    cont.progress([7, 3])
    cont.handling()  # the next frame came in; its sends may have begun when the kill came
    marked = read_progress(path)
    assert marked["in_flight"] == 1 and marked["next_seq.0"] == 7
    successor = Continuity(ServiceStats("flowtracker", rdb, Keys("t")), SequenceGaps(), ("frames_in",), path)
    successor.resume()
    assert successor.next_seqs(2) == [8, 4]  # one past: a frame it sent shows as a gap, never reused
    # its own progress clears the mark: a successor of the successor, killed idle, starts exact
    successor.progress([9, 4])
    third = Continuity(ServiceStats("flowtracker", rdb, Keys("t")), SequenceGaps(), ("frames_in",), path)
    third.resume()
    assert third.next_seqs(2) == [9, 4]


def test_a_file_of_another_run_is_not_taken(rdb, tmp_path, monkeypatch):
    from shared import stats as stats_module

    path = progress_path(tmp_path, "decoder-0")
    monkeypatch.setattr(stats_module, "RUN_ID", "old-run")
    old = Continuity(ServiceStats("decoder-0", rdb, Keys("t")), SequenceGaps(), ("frames_in",), path)
    old.progress([999])
    monkeypatch.setattr(stats_module, "RUN_ID", "new-run")
    first = ServiceStats("decoder-0", rdb, Keys("t"))
    cont = Continuity(first, SequenceGaps(), ("frames_in",), None)
    first.flush()
    cont.progress([5])
    first.flush()
    successor = Continuity(ServiceStats("decoder-0", rdb, Keys("t")), SequenceGaps(), ("frames_in",), path)
    assert successor.resume() == 6  # from the hash of this run, not the old run's file
