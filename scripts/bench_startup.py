"""Start-up benchmark (not a test): where the time of `pktscope run` on a tiny capture goes.

Runs ``pktscope run --read CAPTURE --learning 0`` (a 2-packet capture by default, so the replay
itself is nothing) ``--runs`` times and prints the median of each milestone, in seconds after
the command was started: supervisord up (from its log), the services spawned, capture's first
packet read (``started_packets`` in its stats: every service has said ``ready`` by then), the
last service exited, and the command's exit; and each process's CPU seconds up to ``ready``
(imports and connecting) and peak RSS (the interpreter, libraries and modules: what compiled
modules add shows here without any traffic), read back from the run's saved Redis. Usage:

    .venv/bin/python -m scripts.bench_startup [CAPTURE] [--runs 5] [--decoders 1] [--launchers exec,fork]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from shared.redis_keys import Keys
from shared.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "pcaps" / "cond-log-dns-dig" / "input.pcap"
_LOG_TIME = re.compile(r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) \w+ (.*)")


def _log_events(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = _LOG_TIME.match(line)
        if m:
            t = (
                datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                + int(m.group(2)) / 1000
            )
            out.append((t, m.group(3)))
    return out


def one_run(capture: Path, decoders: int, extra: list[str] = ()) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="pks-", dir="/tmp"))
    try:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = ru.ru_utime + ru.ru_stime
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture), "--learning", "0"]
            + ["--decoders", str(decoders), "--run-dir", str(tmp / "run"), "--state-dir", str(tmp / "state")]
            + list(extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        t_end = time.time()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"pktscope run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        m: dict[str, float] = {
            "command exits": t_end - t0,
            "CPU of the whole command": ru.ru_utime + ru.ru_stime - cpu0,
        }
        events = _log_events(tmp / "run" / "supervisord.log")
        spawned = [t for t, msg in events if msg.startswith("spawned:")]
        exited = [t for t, msg in events if msg.startswith("exited:") and "redis" not in msg]
        m["supervisord up"] = next(t for t, msg in events if msg.startswith("supervisord started")) - t0
        m["last service spawned"] = max(spawned) - t0
        m["last service exited"] = max(exited) - t0
        sproc, url = start_redis_server(tmp / "state" / "b.sock", tmp / "state", "pktscope.rdb", aof=True)
        try:
            r = redis.Redis.from_url(url, decode_responses=True)
            keys = Keys()
            for name in sorted(r.smembers(keys.services())):
                started_packets, at_ready, rss = r.hmget(
                    keys.stats(name), "started_packets", "cpu_at_ready", "max_rss_kb"
                )
                if started_packets:
                    m["first packet read"] = float(started_packets) - t0
                m[f"CPU to ready: {name}"] = float(at_ready or 0)
                m[f"peak RSS MB: {name}"] = float(rss or 0) / 1024
            r.close()
        finally:
            sproc.terminate()
            sproc.wait()
        return m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_startup", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decoders", type=int, default=1)
    ap.add_argument("--extra", default="", help="extra `pktscope run` flags, quoted, e.g. --extra '--batch-size 256'")
    ap.add_argument(
        "--launchers",
        default="",
        help="comma-separated --launcher values (exec,fork) taking turns run by run, one column each",
    )
    args = ap.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    extra = shlex.split(args.extra)
    columns = [c for c in args.launchers.split(",") if c] or [""]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in columns}
    for _ in range(args.runs):
        for c in columns:
            runs[c].append(one_run(args.capture, args.decoders, extra + (["--launcher", c] if c else [])))
    print(
        f"{args.capture.name}, {args.decoders} decoder(s) {' '.join(extra)}, median of {args.runs}"
        + (" taking turns" if len(columns) > 1 else "")
        + f"; load before {load}"
    )
    if len(columns) > 1:
        print(f"  {'':32} " + " ".join(f"{c:>8}" for c in columns))
    order = [
        "supervisord up",
        "last service spawned",
        "first packet read",
        "last service exited",
        "command exits",
    ]
    first = runs[columns[0]][0]
    for key in order + sorted(k for k in first if k not in order):
        cells = []
        for c in columns:
            values = [r[key] for r in runs[c] if key in r]
            cells.append(f"{statistics.median(values):8.3f}" if values else f"{'-':>8}")
        unit = "" if key.startswith("peak RSS") else " s"
        print(f"  {key:32} " + " ".join(cells) + unit)
    print("load after " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
