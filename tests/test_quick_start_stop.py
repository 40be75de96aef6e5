"""What a command's start and end no longer pay for (issue 14), and that nothing is lost for it.

- scripts/setup writes the project's bytecode, which Python cannot write at run time where
  PYTHONDONTWRITEBYTECODE is set (this machine, many container images);
- ``wait_or_kill`` notices an exit at once (a pidfd) and still kills what outlives its timeout;
- `pktscope run` skips the interpreter's teardown, and still flushes what it printed;
- the replay progress bar's rich is imported only when a bar is shown;
- the private redis-server is tied to supervisord's life without a Python start (setpriv), and
  still dies with it;
- supervisord starts its programs without waiting for `pktscope run`'s first call, and ends
  without the interpreter's teardown (after its log and sockets are closed);
- the Public Suffix List is not parsed at each start: setup cached it, and the cache answers
  as the parsed list does.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli.supervisor import parent_death_signal
from shared.processes import wait_or_kill
from tests.pipeline_helpers import ROOT, wait_for


def test_setup_wrote_the_bytecode_of_every_project_module():
    missing = [
        str(path.relative_to(ROOT))
        for top in ("services", "shared")
        for path in (ROOT / top).rglob("*.py")
        if not Path(importlib.util.cache_from_source(str(path))).is_file()
    ]
    assert not missing, f"no bytecode for {missing[:10]} (scripts/setup compiles it)"


def test_wait_or_kill_reaps_a_child_that_exits_and_kills_one_that_does_not():
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    wait_or_kill(quick, 30)
    assert quick.returncode == 0

    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    wait_or_kill(stuck, 0.5)
    assert stuck.returncode == -9 and time.monotonic() - t0 < 30

    wait_or_kill(stuck, 1)  # already reaped: nothing to do, no error
    assert stuck.returncode == -9


def test_run_with_a_bad_flag_still_prints_its_error_and_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run", "--read", "/nonexistent/capture.pcap"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("pktscope: ") and "/nonexistent/capture.pcap" in proc.stderr


def test_the_progress_module_leaves_rich_unimported_until_a_bar_is_shown():
    code = "import sys, services.cli.progress; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("with_setpriv", [True, False])
def test_a_program_tied_to_its_parent_dies_when_the_parent_is_killed(with_setpriv, monkeypatch):
    """The redis program's prefix (setpriv --pdeathsig, else shared/parent_watch.py): a parent
    killed with -9 (supervisord, say) takes the program with it."""
    if not with_setpriv:
        monkeypatch.setenv("PATH", "/nonexistent")  # a system without util-linux's setpriv
    tie = shlex.split(parent_death_signal(sys.executable))
    # Debian's util-linux: no Python start for redis; elsewhere a bare-script Python start
    assert (Path(tie[0]).name == "setpriv") == with_setpriv, tie
    if not with_setpriv:
        assert tie[1:3] == ["-S", "-I"] and tie[3].endswith("shared/parent_watch.py"), tie
        monkeypatch.undo()  # the parent below finds `sleep` on the usual PATH
    parent_code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({[*tie, '--', 'sleep', '60']!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        # setpriv has set the signal once it is the program (a parent killed before that leaves
        # it untied: setpriv has no check for a parent already gone, parent_watch.py has one)
        wait_for(lambda: Path(f"/proc/{child}/comm").read_text().strip() == "sleep", 10, what="the exec")
        parent.kill()
        parent.wait(timeout=10)
        wait_for(lambda: not _alive(child), 10, what="the tied program's end")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _spawn_gap(run_dir: Path, nudge: bool) -> float:
    """Seconds from supervisord's start to its first program's, with nobody calling it over XML-RPC."""
    from services.cli.supervisor import Supervisor

    run_dir.mkdir()
    conf = (
        f"[unix_http_server]\nfile={run_dir}/supervisor.sock\nchmod=0700\n"
        f"[supervisord]\nlogfile={run_dir}/supervisord.log\npidfile={run_dir}/supervisord.pid\n"
        f"childlogdir={run_dir}\nnodaemon=true\nloglevel=info\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "[program:idle]\ncommand=sleep 30\nstartsecs=0\n"
    )
    sup = Supervisor(run_dir)
    sup.spawn(conf)
    if not nudge:
        sup.stop_nudging()  # at once: before supervisord listens
    log = run_dir / "supervisord.log"
    try:
        wait_for(lambda: log.exists() and "spawned: 'idle'" in log.read_text(), 20, interval=0.01, what="the spawn")
    finally:
        sup.shutdown(timeout=10)
    stamps = {}
    for line in log.read_text().splitlines():
        for what in ("supervisord started with pid", "spawned: 'idle'"):
            if what in line and what not in stamps:
                clock = line.split()[1]  # "2026-12-04 23:36:42,435 INFO ..."
                hms, ms = clock.split(",")
                h, m, sec = (int(x) for x in hms.split(":"))
                stamps[what] = h * 3600 + m * 60 + sec + int(ms) / 1000
    return stamps["spawned: 'idle'"] - stamps["supervisord started with pid"]


def test_supervisord_starts_its_programs_without_waiting_for_the_cli(short_tmp):
    """supervisord's first turn of its loop waits up to a second for activity before it starts
    any program; `pktscope run` is busy importing then (0.2 s), so a thread connects to
    supervisord's socket the moment it listens. Without it the first program waits the second."""
    nudged = _spawn_gap(short_tmp / "nudged", nudge=True)
    waited = _spawn_gap(short_tmp / "waited", nudge=False)
    assert nudged < 0.5 <= 0.9 <= waited, (nudged, waited)


def test_setup_cached_the_public_suffix_list_and_the_cache_answers_as_the_parsed_list():
    from publicsuffixlist import PublicSuffixList

    from services.detector.enrich import psl_cache

    path = psl_cache.cache_path()
    assert path is not None and path.is_file(), "scripts/setup writes it"
    cached, parsed = psl_cache.load(), PublicSuffixList()
    assert vars(cached) == vars(parsed)
    names = [
        "a.b.example.co.uk", "user.github.io", "www.ck", "a.b.kawasaki.jp", "city.kawasaki.jp",
        "x.xn--p1ai", "host.corp.internal", "com", "a.com.", "s3.amazonaws.com", "b.s3.amazonaws.com",
    ]  # fmt: skip
    assert [cached.privatesuffix(n) for n in names] == [parsed.privatesuffix(n) for n in names]


def test_a_damaged_or_foreign_cache_is_not_used(tmp_path, monkeypatch):
    from services.detector.enrich import psl_cache

    monkeypatch.setattr(psl_cache, "CACHE_DIR", tmp_path)  # where this test may write
    path = psl_cache.write()
    assert path is not None and path.parent == tmp_path
    good = path.read_bytes()
    import marshal

    for damaged in (good[: len(good) // 2], b"", marshal.dumps(["not", "a", "map"]), marshal.dumps({"_publicsuffix": [1]})):
        path.write_bytes(damaged)
        assert psl_cache._read(path) is None
        assert psl_cache.load().privatesuffix("a.b.example.co.uk") == "example.co.uk"  # parsed instead
    path.write_bytes(good)
    assert psl_cache._read(path) is not None


def test_the_private_redis_stops_without_a_snapshot_and_keeps_its_data(short_tmp):
    """A replay's stop fsyncs the AOF and writes no RDB snapshot (shutdown-on-sigterm nosave);
    the state directory still holds what the run learned (a start loads the AOF)."""
    from shared.redis_server import start_redis_server

    capture = ROOT.parent / "shared" / "corpus" / "pcaps" / "bug-5713-01" / "TLSv1-Extracted-MaliciousC2.pcap"
    run_dir, state = short_tmp / "run", short_tmp / "state"
    cmd = [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture), "--learning", "0"]
    cmd += ["--run-dir", str(run_dir), "--state-dir", str(state)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run_dir / "logs" / "redis.log").read_text()
    assert "User requested shutdown" in log and "Calling fsync() on the AOF file" in log
    assert "Saving the final RDB snapshot" not in log
    server, url = start_redis_server(short_tmp / "check.sock", state, "pktscope.rdb", aof=True)
    try:
        import redis

        r = redis.Redis.from_url(url, decode_responses=True)
        assert any(k.startswith("pktscope:ent:") for k in r.scan_iter("pktscope:*"))  # the learned baseline
        r.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_supervisord_ends_without_teardown_but_with_its_log_written_and_sockets_gone(short_tmp):
    """`pktscope run` starts supervisord through services/cli/supervisord_quick.py, which skips
    the interpreter's teardown once supervisord's main has returned: nothing of its own stop may
    be lost for it (the log's last lines, the socket and pid file it removes)."""
    capture = ROOT.parent / "shared" / "corpus" / "pcaps" / "bug-5713-01" / "TLSv1-Extracted-MaliciousC2.pcap"
    run_dir = short_tmp / "run"
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture), "--run-dir", str(run_dir),
         "--state-dir", str(short_tmp / "state"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    conf = (run_dir / "supervisord.conf").read_text()
    assert "[supervisord]" in conf
    log = (run_dir / "supervisord.log").read_text().splitlines()
    assert log[-1].endswith("stopped: redis (exit status 0)"), log[-5:]
    assert not (run_dir / "supervisor.sock").exists() and not (run_dir / "supervisord.pid").exists()
    assert (run_dir / "supervisord.stderr").read_text() == ""
