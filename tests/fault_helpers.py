"""Shared by the fault tests (issue 10): a long capture, a running replay, process checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from services.cli.runlock import holder_pid
from shared.config import PipelineConfig
from shared.redis_conn import connect
from tests.conftest import BENCH_PCAP, CORPUS
from tests.pipeline_helpers import start_pktscope, wait_for

AMPLIFY = CORPUS.parent / "bench" / "amplify.py"


def amplified(out: Path, copies: int) -> Path:
    """sv-merged.pcap ``copies`` times over (new hosts in each copy), by ../shared/bench/amplify.py."""
    subprocess.run(
        [sys.executable, str(AMPLIFY), str(BENCH_PCAP), str(out), "--copies", str(copies)],
        check=True,
        capture_output=True,
    )
    return out


class Replay:
    """`pktscope run --read CAPTURE --json` in the background, with handles on its parts."""

    def __init__(self, tmp: Path, capture: Path, *extra: str, decoders: int = 1) -> None:
        self.run_dir = tmp / "run"
        self.log = tmp / "pktscope.log"
        self.proc = start_pktscope(
            "run",
            "--read",
            str(capture),
            "--decoders",
            str(decoders),
            "--run-dir",
            str(self.run_dir),
            "--state-dir",
            str(tmp / "state"),
            "--learning",
            "0",
            "--json",
            "--timeout",
            "400",
            *extra,
            log=self.log,
        )
        wait_for(lambda: holder_pid(self.run_dir) == self.proc.pid, 30, what="the run-dir lock")
        wait_for(lambda: (self.run_dir / "pipeline.json").exists(), 30, what="pipeline.json")
        self.cfg = PipelineConfig.load(self.run_dir / "pipeline.json")

    def redis(self):
        def up():
            try:
                r = connect(self.cfg.effective_redis_url, cluster=self.cfg.redis_cluster, socket_timeout=5)
                r.ping()
                return r
            except Exception:  # not up yet
                return None

        return wait_for(up, 30, what="the pipeline's redis")

    def wait_packets(self, at_least: int, timeout: float = 120) -> None:
        r = self.redis()
        key = f"{self.cfg.redis_prefix}:stats:capture"

        def far_enough() -> bool:
            # ``packets`` is in capture's stats write, once a second, and capture can read a
            # whole replay into the decoders' queues between two of them; ``position`` (the
            # resume point, written before every 1,024 packets it hands out) moves with it.
            packets, position, eos = r.hmget(key, "packets", "position", "eos")
            return max(int(float(packets or 0)), int(float(position or 0))) >= at_least and not eos

        wait_for(far_enough, timeout, interval=0.02, what=f"capture to pass {at_least} packets")

    def output(self) -> str:
        return self.log.read_text()

    def summary(self) -> dict:
        import json

        return json.loads(self.output().strip().splitlines()[-1])


def kill_with_unread_frames(pid: int) -> None:
    """Kill -9 a receiving stage so that it dies with frames it had not read: stopped first, its
    sender fills its socket for half a second. (A stage killed while idle, its queue drained,
    loses nothing, and the run rightly says "done": docs/reliability.md.)"""
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
