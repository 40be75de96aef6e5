"""The fork launcher (issue 14): services forked from a zygote behave as exec'd ones under supervisord.

Real processes throughout: a zygote with the probe service (tests/launcher_probe.py) for the
client's contract (exit codes, signals, stdout, the zygote's death), and whole replays for what
supervisord and the tests of the pipeline rely on (restarts, loss counts, the same output).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.cli.supervisor import Supervisor, parent_death_signal, render_config
from services.launcher import start as start_module
from services.launcher.start import (
    CLIENT,
    NATIVE_CLIENT,
    ZygoteProcess,
    native_client_usable,
    pid_path,
    socket_path,
)
from shared.config import PipelineConfig
from tests.conftest import LONG_PACKETS
from tests.fault_helpers import Replay, gone, kill_with_unread_frames
from tests.pipeline_helpers import (
    ROOT,
    LivePipeline,
    pktscope,
    replay_outputs,
    service_pid,
    wait_for,
)

# --- the client's contract, with a probe service -------------------------------------------


@pytest.fixture
def zygote(short_tmp):
    z = ZygoteProcess(short_tmp)
    z.start([])  # nothing preloaded: the probe's child imports it
    yield z
    z.stop()


def client(
    run_dir: Path, *args: str, env: dict | None = None, sock: Path | None = None, kind: str = "python"
) -> subprocess.Popen:
    """The launcher client for the probe service: client.py, or the C one (``kind`` "c")."""
    where = str(sock or socket_path(run_dir))
    if kind == "c":
        head = [str(NATIVE_CLIENT), sys.executable, where]
    else:
        head = [sys.executable, "-S", "-I", str(CLIENT), where]
    return subprocess.Popen(
        [*head, "tests.launcher_probe", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(params=["python", "c"])
def launch(request):
    """Each client's contract is the same: the probe tests run with both."""
    if request.param == "c":
        assert native_client_usable(), "scripts/setup builds services/launcher/build/pks-launch (CI runs it)"
    return lambda *args, **kw: client(*args, kind=request.param, **kw)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_the_socket_is_the_owners_only(zygote, short_tmp):
    st = socket_path(short_tmp).stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()


def test_the_service_is_a_fork_of_the_zygote_with_the_clients_argv_env_and_output(zygote, short_tmp, launch):
    proc = launch(short_tmp, "show", "PROBE_VALUE", env=dict(os.environ, PROBE_VALUE="seen"))
    code, out, err = finish(proc)
    assert code == 0, err
    fields = dict(part.split("=", 1) for part in out.split())
    assert int(fields["pid"]) != proc.pid and int(fields["ppid"]) == zygote.proc.pid
    assert fields["argv"] == "show,PROBE_VALUE" and fields["env"] == "seen"
    assert fields["name"] == "__main__" and fields["file"] == "launcher_probe.py"
    assert fields["cwd"] == str(ROOT)
    assert fields["comm"] == "pks-launcher_pr"  # ps/top tell services apart: "pks-" + name, 15 bytes
    assert "directly" not in err


def test_the_environment_reaches_the_service_byte_for_byte(zygote, short_tmp, launch):
    """Names and values as the client got them: UTF-8, other bytes (Python's surrogateescape on
    both sides), '=' in a value, an empty value; an unset name stays unset."""
    values = {b"PROBE_UTF8": "café ☃".encode(), b"PROBE_RAW": b"a\xff\xc3(b\xed\xa0\x80", b"PROBE_EQ": b"x=y=z", b"PROBE_EMPTY": b""}
    env = dict(os.environb)
    env.update(values)
    for name, value in values.items():
        code, out, err = finish(launch(short_tmp, "envb", name.decode(), env=env))
        assert code == 0, err
        assert bytes.fromhex(out.strip()) == value, name
    assert bytes.fromhex(finish(launch(short_tmp, "envb", "PROBE_UNSET", env=env))[1].strip()) == b"(unset)"


def test_exit_codes_and_deaths_by_signal_are_the_clients(zygote, short_tmp, launch):
    assert finish(launch(short_tmp, "exit", "7"))[:2] == (7, "exiting 7\n")
    assert finish(launch(short_tmp, "exit", "0"))[0] == 0
    assert finish(launch(short_tmp, "signal", str(int(signal.SIGTERM))))[0] == -signal.SIGTERM
    assert finish(launch(short_tmp, "signal", str(int(signal.SIGKILL))))[0] == -signal.SIGKILL
    code, _, err = finish(launch(short_tmp, "raise"))
    assert code == 1 and "RuntimeError: probe failure" in err


def _ready_pid(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.startswith("ready pid="), line
    return int(line.split("=")[1])


def test_signals_reach_the_service_and_its_exit_is_the_clients(zygote, short_tmp, launch):
    proc = launch(short_tmp, "wait-term")
    _ready_pid(proc)
    proc.send_signal(signal.SIGTERM)
    code, out, _ = finish(proc)
    assert code == 5 and out == "term\n"


def test_kill_9_of_the_client_kills_its_service(zygote, short_tmp, launch):
    proc = launch(short_tmp, "wait-term")
    pid = _ready_pid(proc)
    proc.kill()
    proc.wait()
    wait_for(lambda: gone(pid), 5, what="the service of a killed client to die")


def test_without_a_zygote_the_client_becomes_the_service(short_tmp, launch):
    proc = launch(short_tmp, "show", sock=short_tmp / "no-zygote.sock")
    code, out, err = finish(proc)
    assert code == 0 and f"pid={proc.pid} " in out  # exec'd in place: supervisord's pid is the service's
    assert "starting tests.launcher_probe directly" in err
    assert finish(launch(short_tmp, "exit", "7", sock=short_tmp / "no-zygote.sock"))[0] == 7


def test_services_outlive_a_killed_zygote_and_still_report(zygote, short_tmp, launch):
    stopped = launch(short_tmp, "wait-term")
    killed = launch(short_tmp, "wait-term")
    stopped_pid, killed_pid = _ready_pid(stopped), _ready_pid(killed)
    zygote.proc.kill()
    zygote.proc.wait()
    time.sleep(0.2)
    assert not gone(stopped_pid) and not gone(killed_pid)
    stopped.send_signal(signal.SIGTERM)
    assert finish(stopped)[:2] == (5, "term\n")  # its code, from the service itself
    os.kill(killed_pid, signal.SIGKILL)
    assert finish(killed)[0] == -signal.SIGKILL  # no code given: killed, as supervisord must see it
    # a later start finds no zygote and execs
    code, out, err = finish(launch(short_tmp, "exit", "3"))
    assert code == 3 and "directly" in err


def test_supervisord_commands_by_launcher(short_tmp, monkeypatch):
    cfg = PipelineConfig(run_dir=str(short_tmp), decoders=2, observer=True, notify=["file:///dev/null"])
    cfg.launcher = "fork"
    conf = render_config(cfg, sys.executable)
    commands = [line for line in conf.splitlines() if line.startswith("command=")]
    client_cmd = f"command={NATIVE_CLIENT} {sys.executable} {socket_path(short_tmp)} services."
    for name in ("capture", "decoder", "flowtracker", "detector", "observer", "notifier"):
        assert any(c.startswith(client_cmd + name + " ") for c in commands), name
    # without the C client (not built, or older than its source): client.py
    stale = short_tmp / "pks-launch"
    stale.write_bytes(NATIVE_CLIENT.read_bytes())
    stale.chmod(0o755)
    os.utime(stale, (0, 0))
    monkeypatch.setattr(start_module, "NATIVE_CLIENT", stale)
    commands = [line for line in render_config(cfg, sys.executable).splitlines() if line.startswith("command=")]
    client_cmd = f"command={sys.executable} -S -I {CLIENT} {socket_path(short_tmp)} services."
    for name in ("capture", "decoder", "flowtracker", "detector", "observer", "notifier"):
        assert any(c.startswith(client_cmd + name + " ") for c in commands), name
    monkeypatch.undo()
    # redis is not forked; it dies with supervisord (setpriv --pdeathsig, or parent_watch without it)
    assert any("redis-server" in c and parent_death_signal(sys.executable) in c for c in commands)
    cfg.launcher = "exec"
    assert f"command={sys.executable} -m services.decoder " in render_config(cfg, sys.executable)


def test_systemd_units_exec_even_when_fork_is_asked_for(short_tmp):
    out = short_tmp / "units"
    pktscope("systemd", "--interface", "lo", "--launcher", "fork", "--out", str(out))
    assert json.loads((out / "pipeline.json").read_text())["launcher"] == "exec"
    assert "client.py" not in "".join(p.read_text() for p in out.glob("*.service"))


# --- whole pipelines -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_forked_replay_gives_the_alerts_and_flow_log_of_an_execd_one(short_tmp):
    forked = replay_outputs(short_tmp, "fork", "--decoders", "2", "--launcher", "fork", keep_fid=True)
    execd = replay_outputs(short_tmp, "exec", "--decoders", "2", "--launcher", "exec", keep_fid=True)
    assert forked[0]["outcome"] == execd[0]["outcome"] == "done"
    for key in ("packets", "decoded", "flows", "flow_events", "alerts"):
        assert forked[0][key] == execd[0][key], key
    assert len(forked[1]) > 1000 and forked[1] == execd[1]
    assert len(forked[2]) > 10_000 and forked[2] == execd[2]


def _service_pid(replay: Replay, name: str) -> int:
    return int(replay.redis().hget(f"{replay.cfg.redis_prefix}:stats:{name}", "pid") or 0)


@pytest.mark.slow
def test_a_forked_decoder_killed_is_restarted_by_supervisord_and_its_losses_counted(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture, "--launcher", "fork", decoders=2)
    replay.wait_packets(200_000)
    zygote_pid = int(pid_path(replay.run_dir).read_text())
    client_pid = service_pid(replay.run_dir, "decoder:decoder-1")
    pid = _service_pid(replay, "decoder-1")
    assert pid != client_pid and psutil.Process(pid).ppid() == zygote_pid  # the stats give the real pid
    kill_with_unread_frames(pid)
    wait_for(lambda: service_pid(replay.run_dir, "decoder:decoder-1") not in (0, client_pid), 30, what="restart")
    assert replay.proc.wait(timeout=400) == 3, replay.output()[-3000:]
    s = replay.summary()
    assert s["outcome"] == "incomplete" and s["restarts"] == {"decoder-1": 1}
    assert s["lost"]["packets"] > 0 or s["lost"]["records"] > 0, s
    taken = sum(d["packets_in"] for d in s["per_decoder"].values())
    assert taken + s["lost"]["packets"] == s["packets"] == LONG_PACKETS
    log = (replay.run_dir / "supervisord.log").read_text()
    assert "exited: decoder-1 (terminated by SIGKILL" in log  # supervisord saw the service's death


@pytest.mark.slow
def test_kill_9_of_a_client_takes_its_service_and_supervisord_restarts_it(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture, "--launcher", "fork")
    replay.wait_packets(200_000)
    client_pid = service_pid(replay.run_dir, "flowtracker")
    pid = _service_pid(replay, "flowtracker")
    os.kill(client_pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), 5, what="the killed client's flow-tracker to die")
    wait_for(lambda: _service_pid(replay, "flowtracker") not in (0, pid), 30, what="a new flow-tracker")
    assert replay.proc.wait(timeout=400) == 3, replay.output()[-3000:]
    s = replay.summary()
    assert s["restarts"] == {"flowtracker": 1} and s["lost"]["flows"] > 0
    assert s["packets"] == LONG_PACKETS


@pytest.mark.slow
def test_run_forks_the_zygote_from_itself_with_nothing_of_the_cli_but_the_modules(short_tmp, long_capture):
    """`pktscope run` imports the services' modules and forks the zygote from itself: the zygote
    holds neither the run's lock nor the CLI's output, sits in its own session, and dies with
    the CLI; the lock is free once the CLI is gone."""
    replay = Replay(short_tmp, long_capture, "--launcher", "fork")
    replay.wait_packets(100_000)
    zygote = psutil.Process(int(pid_path(replay.run_dir).read_text()))
    assert zygote.ppid() == replay.proc.pid and zygote.name() == "pks-zygote"
    assert os.getsid(zygote.pid) == zygote.pid  # a terminal's Ctrl-C is the CLI's to handle
    fds = {int(fd): os.readlink(f"/proc/{zygote.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote.pid}/fd")}
    assert fds[0] == os.devnull and fds[1] == fds[2] == str(replay.run_dir / "logs" / "zygote.log"), fds
    lock = str(replay.run_dir / "run.lock")
    services = [_service_pid(replay, n) for n in ("capture", "decoder-0", "flowtracker", "detector")]
    for pid in (zygote.pid, *services):
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert lock not in held and str(replay.log) not in held, (pid, held)
    replay.proc.kill()  # kill -9 of the CLI: nothing it started may stay, the lock least of all
    replay.proc.wait()
    wait_for(lambda: gone(zygote.pid) and all(gone(p) for p in services), 15, what="the zygote and services to die")
    lock_fd = os.open(lock, os.O_RDWR)
    try:
        import fcntl

        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anything still holds it
    finally:
        os.close(lock_fd)


def _zygote_owner(short_tmp: Path, with_thread: bool) -> tuple[subprocess.Popen, str, int]:
    """A process that ``fork``s a zygote (with a thread of its own running, or not), prints the
    zygote's kind and pid, and on a line from stdin stops it and prints its exit code."""
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from services.launcher.start import ZygoteProcess\n"
        + ("threading.Thread(target=threading.Event().wait, daemon=True).start()\n" if with_thread else "")
        + "z = ZygoteProcess(Path(sys.argv[1]))\n"
        "z.fork([])\n"
        "print(type(z.proc).__name__, z.proc.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "z.stop()\n"
        "print(z.proc.returncode, flush=True)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(short_tmp)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    kind, pid = parent.stdout.readline().split()
    return parent, kind, int(pid)


def test_with_a_thread_running_the_zygote_is_started_as_its_own_interpreter(short_tmp):
    """Forking a process with a thread in it is unsafe (a lock it holds stays held in the child):
    ``fork`` then starts the zygote on its own, and it serves as well."""
    parent, kind, pid = _zygote_owner(short_tmp, with_thread=True)
    try:
        assert kind == "Popen" and "services.launcher.zygote" in " ".join(psutil.Process(pid).cmdline())
        rc, out, err = finish(client(short_tmp, "show"))
        assert rc == 0 and f"ppid={pid}" in out, (out, err)
    finally:
        parent.communicate("\n", timeout=30)
    assert parent.returncode == 0 and gone(pid)


def test_a_forked_zygote_serves_and_stops(short_tmp):
    """The zygote forked by ``fork`` (no thread running) serves clients as a started one does,
    and ``stop`` ends it and removes its socket and pid file."""
    parent, kind, pid = _zygote_owner(short_tmp, with_thread=False)
    try:
        assert kind == "ForkedProcess" and psutil.Process(pid).ppid() == parent.pid
        rc, out, err = finish(client(short_tmp, "exit", "7"))
        assert rc == 7, err
        rc, out, err = finish(client(short_tmp, "show"))
        assert rc == 0 and f"ppid={pid}" in out, (out, err)
    finally:
        out, _ = parent.communicate("\n", timeout=30)
    assert parent.returncode == 0 and out.strip() == "0", out
    assert gone(pid) and not socket_path(short_tmp).exists() and not pid_path(short_tmp).exists()


_PRELOAD_PROBE = """
import gc, json, sys
from services.launcher import zygote
if sys.argv[1] == "off":
    gc.disable()
runs = []
gc.callbacks.append(lambda phase, info: runs.append(info["generation"]) if phase == "start" else None)
before = gc.get_freeze_count()
zygote.preload(["services.capture", "services.decoder", "services.detector"])
print(json.dumps({"collections": runs, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() - before,
                  "loaded": all(m in sys.modules for m in ("services.decoder.service", "services.detector.engine"))}))
"""


@pytest.mark.parametrize("collector", ["on", "off"])
def test_preload_imports_without_collections_and_freezes_what_it_imported(collector):
    """The services' imports run with the collector off (their objects live as long as the
    process: collecting among them is wasted start-up), what they made ends frozen, and the
    collector is left as the caller had it."""
    out = subprocess.run(
        [sys.executable, "-c", _PRELOAD_PROBE, collector], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["loaded"] and got["collections"] == []
    assert got["frozen"] > 50_000  # the imports' objects, out of the collector's sight
    assert got["enabled"] is (collector == "on")


@pytest.mark.slow
def test_after_the_zygote_dies_restarts_exec_the_service(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture, "--launcher", "fork", decoders=2)
    replay.wait_packets(150_000)
    os.kill(int(pid_path(replay.run_dir).read_text()), signal.SIGKILL)
    pid = _service_pid(replay, "decoder-0")
    kill_with_unread_frames(pid)
    wait_for(lambda: _service_pid(replay, "decoder-0") not in (0, pid), 30, what="decoder-0 restarted")
    # exec'd in place of its client: supervisord's pid is the service's
    assert _service_pid(replay, "decoder-0") == service_pid(replay.run_dir, "decoder:decoder-0")
    assert replay.proc.wait(timeout=400) == 3, replay.output()[-3000:]
    s = replay.summary()
    assert s["restarts"] == {"decoder-0": 1} and s["packets"] == LONG_PACKETS
    taken = sum(d["packets_in"] for d in s["per_decoder"].values())
    assert taken + s["lost"]["packets"] == LONG_PACKETS
    assert "starting services.decoder directly" in (replay.run_dir / "logs" / "decoder-0.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["fork", "exec"])
def test_sigterm_stops_services_cleanly_and_fast(short_tmp, launcher):
    pipe = LivePipeline(short_tmp, "udp port 9", decoders=2, extra=("--launcher", launcher))
    names = ("capture", "decoder-0", "decoder-1", "flowtracker", "detector")
    try:
        pids = {n: int(pipe.stats(n)["pid"]) for n in names}
        sup = {i["name"]: i["pid"] for i in Supervisor(pipe.run_dir).rpc.getAllProcessInfo()}
        assert all((pids[n] != sup[n]) == (launcher == "fork") for n in names), (pids, sup)
    finally:
        t0 = time.monotonic()
        code = pipe.stop()  # Ctrl-C: the CLI stops each group over XML-RPC, supervisord sends SIGTERM
        took = time.monotonic() - t0
    assert code == 0 and took < 5, (code, took)
    assert all(gone(p) for p in pids.values())
    log = (pipe.run_dir / "supervisord.log").read_text()
    assert "stopped: capture (exit status 0)" in log, log[-2000:]
    for n in names[1:]:  # downstream stages end by themselves at the end of stream capture sends
        ended = f"stopped: {n} (exit status 0)" in log or f"exited: {n} (exit status 0; expected)" in log
        if not ended:  # printed whole (an assertion message is shortened): pytest shows it
            own = pipe.run_dir / "logs" / f"{n}.log"
            print(f"--- supervisord.log\n{log}\n--- {n}.log\n{own.read_text() if own.exists() else ''}")
        assert ended, n
    assert not socket_path(pipe.run_dir).exists() and not pid_path(pipe.run_dir).exists()
    print(f"{launcher}: stop took {took:.2f} s")
