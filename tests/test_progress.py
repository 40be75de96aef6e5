"""`pktscope run --read` shows a progress bar when stderr is a terminal and leaves the summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import BENCH_PCAP

from services.cli.progress import file_offset
from tests.pipeline_helpers import ROOT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(args: list[str]) -> str:
    """Run with stdout and stderr on a pseudo-terminal; everything it wrote, escapes removed."""
    master, slave = os.openpty()
    env = dict(os.environ, COLUMNS="160", TERM="xterm-256color")
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return ANSI.sub("", b"".join(chunks).decode(errors="replace"))


@pytest.mark.slow
def test_bar_on_a_terminal_then_the_summary(short_tmp) -> None:
    out = run_on_a_terminal(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "--read",
            str(BENCH_PCAP),
            "--run-dir",
            str(short_tmp / "run"),
            "--state-dir",
            str(short_tmp / "state"),
            "--learning",
            "0",
        ]
    )
    assert "replay" in out and "packets/s" in out and "alerts" in out and "MB" in out
    summary = out[out.rindex("pktscope: ") :]
    assert "packets      183,388 captured" in summary
    assert "packets/s" not in summary.split("\n", 1)[1], "the bar is gone once the summary is printed"


def test_no_bar_when_stderr_is_not_a_terminal(short_tmp) -> None:
    pcap = BENCH_PCAP.parent.parent / "pcaps" / "bug-2646-01" / "input.pcap"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "--read",
            str(pcap),
            "--run-dir",
            str(short_tmp / "run"),
            "--state-dir",
            str(short_tmp / "state"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "packets/s" not in proc.stderr and "\x1b[" not in proc.stderr


def test_file_offset_of_a_reading_process(tmp_path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 10_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1234)
        assert file_offset(os.getpid(), str(path)) == 1234
    finally:
        os.close(fd)
    assert file_offset(os.getpid(), str(tmp_path / "other")) is None
