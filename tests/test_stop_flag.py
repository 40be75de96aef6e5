"""A service that is already exiting is not killed by a late SIGTERM (shared/service.StopFlag).

supervisord may stop a decoder at the moment it leaves by itself after its end of stream. Late
in interpreter shutdown CPython restores the default action of signals that had a Python
handler, so the SIGTERM then killed the finished process (exit 143, "terminated by SIGTERM").
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.conftest import ROOT

# a process whose shutdown is slow: freeing six million small lists takes a while
EXITING = """
import sys
from shared.service import StopFlag
stop = StopFlag()
garbage = [[i] for i in range(6_000_000)]
print("exiting", flush=True)
"""


def _sigterm_while_exiting() -> int:
    proc = subprocess.Popen([sys.executable, "-c", EXITING], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "exiting"
    time.sleep(0.05)  # past the last Python line, into the interpreter's shutdown
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_a_sigterm_during_shutdown_leaves_the_exit_status_0():
    codes = [_sigterm_while_exiting() for _ in range(2)]
    assert codes == [0, 0], codes


def test_a_sigterm_before_the_end_still_stops_the_loop():
    code = """
import time
from shared.service import StopFlag
stop = StopFlag()
print("ready", flush=True)
while not stop:
    time.sleep(0.01)
print("stopped", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "stopped"
    assert proc.wait(timeout=10) == 0


def test_a_service_stuck_after_the_stop_signal_says_where_and_exits_0_before_the_sigkill():
    code = """
import threading
import shared.service as service
service.STOP_DEADLINE = 0.5
stop = service.StopFlag()
print("ready", flush=True)
def stuck_here_forever():
    threading.Event().wait()  # a wait that does not look at the flag
stuck_here_forever()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    took = time.monotonic() - started
    err = proc.stderr.read()
    assert 0.4 < took < 5, took
    assert "still running 0.5 s after the stop signal; exiting now" in err, err
    assert "stuck_here_forever" in err, err  # the main thread's stack, where it hung


def test_a_service_that_stops_in_time_is_not_cut_short():
    code = """
import time
import shared.service as service
service.STOP_DEADLINE = 0.5
stop = service.StopFlag()
print("ready", flush=True)
while not stop:
    time.sleep(0.01)
time.sleep(0.2)  # its own orderly wind-down, within the deadline
print("done", flush=True)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout.read().strip() == "done"
    assert "still running" not in proc.stderr.read()
