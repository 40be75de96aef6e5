"""A service that keeps dying is not restarted for ever: `pktscope run` stops the replay, shows the
end of that service's log and exits 1 (services/cli/run.py, MAX_RESTARTS)."""

from __future__ import annotations

import os
import signal

from services.cli.run import MAX_RESTARTS
from tests.fault_helpers import Replay, gone
from tests.pipeline_helpers import stop_pktscope, wait_for


def test_a_crash_looping_detector_ends_the_run_with_its_log(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture)
    r = replay.redis()
    key = f"{replay.cfg.redis_prefix}:stats:detector"
    try:
        replay.wait_packets(1)
        for _ in range(MAX_RESTARTS + 1):
            if replay.proc.poll() is not None:
                break
            pid = wait_for(lambda: int(r.hget(key, "pid") or 0), 30, what="a detector")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda p=pid: gone(p), 10, what="the killed detector to go")
            wait_for(
                lambda p=pid: replay.proc.poll() is not None or int(r.hget(key, "pid") or p) != p,
                30,
                what="the detector restarted, or the run ended",
            )
        code = replay.proc.wait(timeout=60)
    finally:
        if replay.proc.poll() is None:
            stop_pktscope(replay.proc)
    out = replay.output()
    assert code == 1, out[-3000:]
    assert "service detector keeps crashing" in out, out[-3000:]
    assert "detector.log" in out
