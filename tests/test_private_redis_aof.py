"""The private Redis's append-only file stays compact: a start-up replays it before the first packet."""

from __future__ import annotations

import shlex
import time

import redis

from services.cli.supervisor import render_config
from services.cli.systemd import redis_argv
from shared.config import PipelineConfig
from shared.redis_server import AOF_ARGS, start_redis_server


def _persistence(argv: list[str]) -> dict[str, str]:
    """The ``--append*``/``--auto-aof*`` options of a redis-server command line."""
    return {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith(("--append", "--auto-aof"))}


def test_supervisord_systemd_and_the_cli_run_redis_with_the_same_persistence(tmp_path):
    cfg = PipelineConfig(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    line = next(x for x in render_config(cfg).splitlines() if x.startswith("command=") and "redis-server" in x)
    wanted = _persistence(list(AOF_ARGS))
    assert "--auto-aof-rewrite-min-size" in wanted
    assert _persistence(shlex.split(line)) == wanted
    assert _persistence(redis_argv(cfg)) == wanted


def test_a_growing_log_of_commands_is_compacted(tmp_path):
    """12 MB of overwrites of one 4 KB value: past the threshold (8 MB) the log is rewritten to a
    base holding the data, so a restart does not replay every write ever made. (redis-server's
    own threshold, 64 MB, would leave all 12 MB.)"""
    proc, url = start_redis_server(tmp_path / "r.sock", tmp_path, aof=True)
    try:
        r = redis.Redis.from_url(url)
        value = b"x" * 4096
        for _ in range(3000):
            r.set("k", value)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = r.info("persistence")
            if info["aof_rewrites"] >= 1 and not info["aof_rewrite_in_progress"]:
                break
            time.sleep(0.05)
        info = r.info("persistence")
        assert info["aof_rewrites"] >= 1, info
        assert info["aof_current_size"] < 6_000_000, info  # the base and the writes since
        r.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
