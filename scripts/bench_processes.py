"""Benchmark (not a test): where one whole `pktscope run --read` command spends its CPU, by process.

Starts the command, samples every process under it every 20 ms with psutil (CPU user+sys, by
process name: forked services are named ``pks-<service>[-<index>]``, see services/launcher/) and
prints, per name, the last CPU seen, the sum and the wall time. A process's CPU in its last
20 ms before it exits can be missed, so the sum is a little under ``scripts/bench``'s
``getrusage`` total; use this for the split, that for the total. Like ``scripts/bench``, each
command gets a fresh state directory (the private Redis's data), unless ``--state-dir`` names
one: a directory many replays have written to makes the Redis start-up part of the figure.
Usage:

    .venv/bin/python -m scripts.bench_processes [CAPTURE] [--decoders 2] [--extra "run flags"]
"""

from __future__ import annotations

import argparse
import collections
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"
SAMPLE_SECONDS = 0.02


def label(proc: psutil.Process) -> str:
    """A service's name (``pks-decoder-0``), else the program and its module."""
    name = proc.name()
    if name.startswith("pks-"):
        return name
    argv = proc.cmdline()
    if len(argv) > 2 and argv[1] == "-m":
        return f"{name} -m {argv[2]}"
    return name


def measure(
    capture: Path, decoders: int, extra: list[str], state_dir: Path | None = None
) -> tuple[dict[str, float], float, int]:
    """(CPU seconds by process label, wall seconds, exit status) of one whole command."""
    fresh = None if state_dir is not None else Path(tempfile.mkdtemp(prefix="pktscope-bench-state-"))
    try:
        return _measure(capture, decoders, [*extra, "--state-dir", str(state_dir or fresh)])
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)


def _measure(capture: Path, decoders: int, extra: list[str]) -> tuple[dict[str, float], float, int]:
    cmd = [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture)]
    cmd += ["--decoders", str(decoders), "--learning", "0", "--json", *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    last: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                t = p.cpu_times()
                last[p.pid] = (label(p), t.user + t.system)
            except psutil.Error:
                pass
        time.sleep(SAMPLE_SECONDS)
    wall = time.monotonic() - start
    by_label: collections.Counter[str] = collections.Counter()
    for name, cpu in last.values():
        by_label[name] += cpu
    return dict(by_label), wall, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_processes", description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--extra", default="", help='more `pktscope run` flags, e.g. "--launcher exec"')
    ap.add_argument("--state-dir", type=Path, default=None, help="the private Redis's data (default: a fresh one)")
    args = ap.parse_args(argv)
    if not args.capture.exists():
        ap.error(f"{args.capture}: no such capture file")
    cpu, wall, code = measure(args.capture, args.decoders, shlex.split(args.extra), args.state_dir)
    print(f"{args.capture.name}: whole command {wall:.2f} s wall, exit {code}; CPU s by process:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:6.2f}  {name}")
    print(f"  {sum(cpu.values()):6.2f}  sum")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
