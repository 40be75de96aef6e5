"""What a command's start and end no longer pay for (issue 14), and that nothing is lost for it.

- scripts/setup writes the project's bytecode, which Python cannot write at run time where
  PYTHONDONTWRITEBYTECODE is set (this machine, many container images);
- ``wait_or_kill`` notices an exit at once (a pidfd) and still kills what outlives its timeout;
- `pktscope run` skips the interpreter's teardown, and still flushes what it printed;
- the replay progress bar's rich is imported only when a bar is shown.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from shared.processes import wait_or_kill
from tests.pipeline_helpers import ROOT


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
