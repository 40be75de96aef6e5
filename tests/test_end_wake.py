"""`pktscope run` hears a service's end of stream at once (shared/end_wake.py), through a real
unix datagram socket, from a real stats write to a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import time

from shared import end_wake
from shared.end_wake import ENV, EndWake
from shared.redis_keys import Keys
from shared.stats import ServiceStats
from tests.conftest import ROOT


def test_a_stats_write_with_eos_wakes_the_listener_and_others_do_not(short_tmp, rdb, monkeypatch):
    wake = EndWake.bind(short_tmp / "wake.sock")
    assert wake is not None
    monkeypatch.setenv(ENV, str(wake.path))
    try:
        stats = ServiceStats("detector", rdb, Keys("w"))
        stats.c["frames_in"] += 1
        assert stats.flush()
        began = time.monotonic()
        assert not wake.wait(0.05)  # a plain write: the full wait
        assert time.monotonic() - began >= 0.04
        assert stats.flush_final(eos=1)
        began = time.monotonic()
        assert wake.wait(5.0)
        assert time.monotonic() - began < 1.0
        assert rdb.hget(Keys("w").stats("detector"), "eos") == "1"  # Redis is still the record
    finally:
        wake.close()
    assert not (short_tmp / "wake.sock").exists()
    end_wake.notify()  # nobody listens any more: nothing raised


def test_a_service_process_wakes_a_listener_in_another_process(short_tmp):
    """What a forked or exec'd service does: ENV in its environment, one datagram at its end."""
    wake = EndWake.bind(short_tmp / "wake.sock")
    assert wake is not None
    try:
        code = "from shared import end_wake; end_wake.notify(); end_wake.notify()"
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={ENV: str(wake.path)}, check=True, timeout=30)
        assert wake.wait(5.0)
        assert not wake.wait(0.01)  # both bytes were taken by the first wait
    finally:
        wake.close()


def test_where_no_socket_can_be_bound_the_wait_is_a_plain_pause(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert EndWake.bind(deep / "wake.sock") is None  # past sockaddr_un's length
    assert EndWake.bind(tmp_path / "missing" / "wake.sock") is None


def test_a_replay_gives_its_programs_the_socket_and_removes_it(short_tmp):
    """The path reaches supervisord's programs in their environment, the socket listens during
    the replay, and is gone after it. Exec'd services (``--launcher exec``) show it in
    /proc/PID/environ; forked ones get the very environment their launcher client has
    (tests/test_launcher_fork.py), which /proc does not show for a fork."""
    import psutil

    from tests.pipeline_helpers import start_pktscope

    capture = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"
    run_dir = short_tmp / "run"
    proc = start_pktscope(
        "run", "--read", str(capture), "--run-dir", str(run_dir), "--state-dir", str(short_tmp / "s"), "--json",
        "--launcher", "exec", log=short_tmp / "run.log",
    )  # fmt: skip
    seen: dict[str, str] = {}
    try:
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and "detector" not in seen:
            for p in psutil.process_iter(["cmdline"]):
                # `python -m services.detector --config RUN_DIR/pipeline.json`
                if "services.detector" in (p.info["cmdline"] or []) and str(run_dir) in " ".join(p.info["cmdline"]):
                    try:
                        seen["detector"] = p.environ().get(ENV, "")
                        seen["listening"] = str((run_dir / "end-wake.sock").exists())
                    except psutil.Error:
                        pass
            time.sleep(0.01)
        assert proc.wait(timeout=120) == 0, (short_tmp / "run.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen == {"detector": str(run_dir / "end-wake.sock"), "listening": "True"}
    assert not (run_dir / "end-wake.sock").exists()
