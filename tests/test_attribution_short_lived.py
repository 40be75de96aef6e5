"""Issue 9: every flow tied to the program that opened it, even one that lives milliseconds.

Live on `lo` with `--learning 0` under the real supervisor, kernel-event attribution
(procwatch, eBPF tracepoints). The programs are copies with unique names, so each is a new
entity that must raise its own `new_process_egress` naming its exact path and pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.procwatch.loader import BpfUnavailable, precheck
from tests.pipeline_helpers import pktscope, wait_for
from tests.procwatch_helpers import HttpResponder, Pipeline, UdpSink, build, copies

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture and BPF need root (CI runs as root)"),
]
ALERT_TIMEOUT = 90.0  # generous: the machine is shared; normally every alert is in within ~2 s


def test_bpf_path_is_available_here():
    """CI machines have BTF and scripts/setup built the object: the kernel path must load."""
    try:
        precheck()
    except BpfUnavailable as exc:
        pytest.fail(f"kernel-event attribution cannot load: {exc}")


@pytest.fixture
def http():
    s = HttpResponder()
    yield s
    s.close()


@pytest.fixture
def sink():
    s = UdpSink()
    yield s
    s.close()


def test_sixty_short_lived_programs_each_named_with_exact_path_and_pid(short_tmp, http, sink):
    tcp = copies(build(short_tmp, "tcpsend"), short_tmp / "bin", "tcp", 20)
    udp = copies(build(short_tmp, "udpsend"), short_tmp / "bin", "udp", 20)
    curl = copies(Path(shutil.which("curl") or "/usr/bin/curl").resolve(), short_tmp / "bin", "curl", 20)
    flow_log = short_tmp / "flows.jsonl"
    pipe = Pipeline(short_tmp, f"tcp port {http.port} or udp port {sink.port}", "--flow-log", str(flow_log))
    try:
        pids: dict[str, int] = {}
        for exe in tcp:
            pids[str(exe)] = _run([exe, "127.0.0.1", str(http.port), "200"])
        for exe in udp:
            pids[str(exe)] = _run([exe, "127.0.0.1", str(sink.port), "200", "1"])
        for exe in curl:
            pids[str(exe)] = _run([exe, "-s", "-o", "/dev/null", f"http://127.0.0.1:{http.port}/"])
        found = pipe.collect("new_process_egress", set(pids), ALERT_TIMEOUT)
        right = [e for e, a in found.items() if a["detail"].get("pid") == pids[e] and a["detail"]["exe"] == e]
        share = len(right) / len(pids)
        missing = sorted(set(pids) - set(right))
        assert share >= 0.99, f"{len(right)}/{len(pids)} attributed; missing {missing[:10]}"
        alert = found[str(tcp[0])]
        detail = alert["detail"]
        assert detail["attribution"] == "bpf"
        assert detail["ppid"] == os.getpid()
        assert detail["argv"] == [str(tcp[0]), "127.0.0.1", str(http.port), "200"]
        assert detail["username"] == "root"
        assert detail["parent_exe"] == os.path.realpath(f"/proc/{os.getpid()}/exe")
        # status says which mode runs
        status = pktscope("status", "--run-dir", str(pipe.run_dir), timeout=60).stdout
        assert "attribution: bpf" in status
        assert "attribution: kernel events" in pipe.log.read_text()
        # the flow log names the process of every flow too, once the flows have ended
        ended = wait_for(lambda: _logged(flow_log, set(pids)), ALERT_TIMEOUT, what="flow-log lines")
        assert all(p and p["pid"] == pids[p["exe"]] for p in ended.values())
    finally:
        assert pipe.stop() == 0


def _run(argv: list) -> int:
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=30) == 0, argv
    return proc.pid


def _logged(path: Path, exes: set[str]) -> dict[str, dict] | None:
    if not path.exists():
        return None
    seen = {}
    for line in path.read_text().splitlines():
        proc = json.loads(line).get("process")
        if proc and proc.get("exe") in exes:
            seen[proc["exe"]] = proc
    return seen if set(seen) == exes else None
