"""Benchmark (not a test): where one whole `pktscope run --read` command spends its CPU, by process.

Starts the command, samples every process under it every 20 ms with psutil (CPU user+sys, by
process name: forked services are named ``pks-<service>[-<index>]``, see services/launcher/) and
prints, per name, the last CPU seen, the sum and the wall time, and under the sum the system
CPU and minor page faults of all the processes together. A process's CPU in its last
20 ms before it exits can be missed, so the sum is a little under ``scripts/bench``'s
``getrusage`` total; use this for the split, that for the total. Like ``scripts/bench``, each
command gets a fresh state directory (the private Redis's data), unless ``--state-dir`` names
one: a directory many replays have written to makes the Redis start-up part of the figure.
Usage:

    .venv/bin/python -m scripts.bench_processes [CAPTURE] [--decoders 2] [--extra "run flags"]
        [--runs K] [--against OTHER_CHECKOUT]

With ``--runs``, each process's median CPU and its median share of the command's sum are shown:
on this machine the whole command's CPU drifts by ±20% from minute to minute, all processes
together, so a change to one process shows in its share long before it shows in the total.
``--against`` names another checkout (built with its own ``scripts/setup``) run in turn with
this one, run by run: an A/B of two commits on the same minutes of the same machine.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import shutil
import statistics
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
    capture: Path, decoders: int, extra: list[str], state_dir: Path | None = None, root: Path = ROOT
) -> tuple[dict[str, float], float, int]:
    """(CPU seconds by process label, wall seconds, exit status) of one whole command of ``root``'s checkout."""
    fresh = None if state_dir is not None else Path(tempfile.mkdtemp(prefix="pktscope-bench-state-"))
    try:
        return _measure(capture, decoders, [*extra, "--state-dir", str(state_dir or fresh)], root)
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)


def _measure(capture: Path, decoders: int, extra: list[str], root: Path) -> tuple[dict[str, float], float, int]:
    python = sys.executable if root == ROOT else str(root / ".venv" / "bin" / "python")
    cmd = [python, "-m", "services.cli.main", "run", "--read", str(capture)]
    cmd += ["--decoders", str(decoders), "--learning", "0", "--json", *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    last: dict[int, tuple[str, float, float, int]] = {}
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                t = p.cpu_times()
                last[p.pid] = (label(p), t.user + t.system, t.system, minor_faults(p.pid))
            except (psutil.Error, OSError):
                pass
        time.sleep(SAMPLE_SECONDS)
    wall = time.monotonic() - start
    by_label: collections.Counter[str] = collections.Counter()
    for name, cpu, system, faults in last.values():
        by_label[name] += cpu
        by_label[SYSTEM] += system
        by_label[FAULTS] += faults
    return dict(by_label), wall, proc.returncode


# not processes: the whole command's system CPU and minor page faults, in the same table
SYSTEM, FAULTS = "(of the sum: system CPU s)", "(minor page faults)"


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/PID/stat, field 10)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b")", 1)[1].split()[7])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_processes", description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--extra", default="", help='more `pktscope run` flags, e.g. "--launcher exec"')
    ap.add_argument("--state-dir", type=Path, default=None, help="the private Redis's data (default: a fresh one)")
    ap.add_argument("--runs", type=int, default=1, help="commands per checkout; medians are shown (default 1)")
    ap.add_argument("--against", type=Path, default=None, help="another checkout to run in turn with this one")
    args = ap.parse_args(argv)
    if not args.capture.exists():
        ap.error(f"{args.capture}: no such capture file")
    if args.runs < 1:
        ap.error("--runs must be 1 or more")
    roots = [ROOT]
    if args.against is not None:
        other = args.against.resolve()
        if not (other / ".venv" / "bin" / "python").exists():
            ap.error(f"--against {other}: no .venv there; run its scripts/setup first")
        roots.append(other)
    runs: dict[Path, list[dict[str, float]]] = {root: [] for root in roots}
    walls: dict[Path, list[float]] = {root: [] for root in roots}
    failed = 0
    for _ in range(args.runs):
        for root in roots:
            cpu, wall, code = measure(args.capture, args.decoders, shlex.split(args.extra), args.state_dir, root)
            failed += code != 0
            runs[root].append(cpu)
            walls[root].append(wall)
    for root in roots:
        report(args.capture, root, runs[root], walls[root])
    return 0 if not failed else 1


def report(capture: Path, root: Path, runs: list[dict[str, float]], walls: list[float]) -> None:
    """Per process: median CPU s and, over several runs, the median share of each run's sum."""
    median = statistics.median
    extra = (SYSTEM, FAULTS)
    runs = [dict(c) for c in runs]
    totals = [{k: c.pop(k, 0) for k in extra} for c in runs]
    names = sorted({name for cpu in runs for name in cpu}, key=lambda n: -median([c.get(n, 0.0) for c in runs]))
    where = "" if root == ROOT else f" ({root})"
    print(f"{capture.name}{where}: whole command {median(walls):.2f} s wall, median of {len(runs)}; CPU s by process:")
    for name in names:
        seconds = median([c.get(name, 0.0) for c in runs])
        share = median([c.get(name, 0.0) / (sum(c.values()) or 1.0) for c in runs])
        print(f"  {seconds:6.2f}  {share:6.1%}  {name}")
    print(f"  {median([sum(c.values()) for c in runs]):6.2f}          sum")
    print(f"  {median([t[SYSTEM] for t in totals]):6.2f}          {SYSTEM}")
    print(f"  {median([t[FAULTS] for t in totals]):6.0f}          {FAULTS}")


if __name__ == "__main__":
    sys.exit(main())
