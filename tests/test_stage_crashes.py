"""Stage crashes never pass silently (issue 10). A stage is killed (-9) in the middle of a replay
under the real supervisord; the replay must finish (no hang), count what was lost, say
"incomplete" and exit 3, and a restarted capture must go on from where it had got to."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import LONG_PACKETS
from tests.fault_helpers import Replay, kill_with_unread_frames
from tests.pipeline_helpers import pktscope, service_pid, wait_for


def _kill_mid_replay(
    tmp, capture, name: str, decoders: int = 1, at: int = 200_000, stalled: bool = False
) -> Replay:
    """Kill ``name`` once capture has passed packet ``at``; ``stalled``: with frames it had not
    read (fault_helpers.kill_with_unread_frames)."""
    replay = Replay(tmp, capture, decoders=decoders)
    replay.wait_packets(at)
    pid = service_pid(replay.run_dir, name)
    if stalled:  # the service's own pid (its stats'): supervisord's is its launcher client's
        stats = replay.redis().hget(f"{replay.cfg.redis_prefix}:stats:{name.rpartition(':')[2]}", "pid")
        kill_with_unread_frames(int(stats))
    else:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: service_pid(replay.run_dir, name) not in (0, pid), 30, what=f"{name} restarted")
    return replay


def _status(run_dir) -> tuple[dict, str]:
    raw = json.loads(pktscope("status", "--json", "--run-dir", str(run_dir)).stdout)["services"]
    text = pktscope("status", "--run-dir", str(run_dir)).stdout
    return raw, text


@pytest.mark.slow
def test_flowtracker_killed_mid_replay_is_counted_and_the_run_says_incomplete(short_tmp, long_capture):
    name = "flowtracker"
    replay = _kill_mid_replay(short_tmp, long_capture, name)
    assert replay.proc.wait(timeout=400) == 3, replay.output()[-3000:]
    out = replay.output()
    assert "pktscope: incomplete: lost" in out and "Traceback" not in out
    s = replay.summary()
    assert s["outcome"] == "incomplete"
    assert s["restarts"] == {"flowtracker": 1}
    assert s["lost"]["flows"] > 0  # the flow table that died with it
    assert s["packets"] == LONG_PACKETS
    raw, text = _status(replay.run_dir)
    assert raw["flowtracker"]["restarts"] == 1 and raw["flowtracker"]["flows_lost"] == s["lost"]["flows"]
    assert "LOST:" in text and "restarted 1 time(s)" in text


@pytest.mark.slow
def test_decoder_killed_mid_replay_counts_the_packets_it_took_with_it(short_tmp, long_capture):
    replay = _kill_mid_replay(short_tmp, long_capture, "decoder:decoder-1", decoders=2, stalled=True)
    assert replay.proc.wait(timeout=400) == 3, replay.output()[-3000:]
    s = replay.summary()
    assert s["outcome"] == "incomplete"
    assert s["restarts"] == {"decoder-1": 1}
    assert s["lost"]["packets"] > 0 or s["lost"]["records"] > 0, json.dumps(s)
    taken = sum(d["packets_in"] for d in s["per_decoder"].values())
    assert taken + s["lost"]["packets"] == s["packets"] == LONG_PACKETS  # every packet accounted for
    raw, text = _status(replay.run_dir)
    assert raw["decoder-1"]["restarts"] == 1
    assert "LOST:" in text


@pytest.mark.slow
def test_capture_killed_mid_replay_resumes_where_it_was_and_sends_nothing_twice(short_tmp, long_capture):
    replay = _kill_mid_replay(short_tmp, long_capture, "capture", at=300_000)
    code = replay.proc.wait(timeout=400)
    assert code in (0, 3), replay.output()[-3000:]
    s = replay.summary()
    assert s["restarts"] == {"capture": 1}
    assert s["packets"] == LONG_PACKETS
    taken = sum(d["packets_in"] for d in s["per_decoder"].values())
    assert taken <= LONG_PACKETS, "packets were sent twice (capture started over)"
    assert taken + s["lost"]["packets"] == LONG_PACKETS
    assert (code == 3) == any(s["lost"].values())
    raw, _ = _status(replay.run_dir)
    assert raw["capture"]["resumed_after"] >= 300_000
    assert raw["capture"]["restarts"] == 1
