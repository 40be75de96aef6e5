"""Memory benchmark (not a test): what each service process really costs under each launcher.

A forked service shares the zygote's pages until it writes them, so its RSS counts pages that
exist once for all services. This samples, every 50 ms during a replay, each service's RSS, PSS
(shared pages divided among their sharers) and USS (pages only it has) with psutil, plus the
zygote and the thin clients under fork, and prints each process's peak and the sum of PSS (the
pipeline's real footprint). The launchers take turns run by run. Usage:

    .venv/bin/python -m scripts.bench_launcher_memory [CAPTURE] [--runs 3] [--decoders 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from shared.config import PipelineConfig
from shared.redis_keys import Keys

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"
MB = 1024 * 1024


def _sample(pids: dict[str, int], peaks: dict[str, dict[str, float]]) -> None:
    for name, pid in pids.items():
        try:
            mem = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            continue
        peak = peaks.setdefault(name, {"rss": 0.0, "pss": 0.0, "uss": 0.0})
        for field in peak:
            peak[field] = max(peak[field], getattr(mem, field) / MB)


def _processes(run_dir: Path, r: redis.Redis | None, keys: Keys, cfg: PipelineConfig | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if r is not None and cfg is not None:
        for name in r.smembers(keys.services()):
            run_id, pid = r.hmget(keys.stats(name), "run_id", "pid")
            if run_id == cfg.run_id and pid:
                out[name] = int(pid)
    zygote = run_dir / "zygote.pid"
    if zygote.exists():
        try:
            zpid = int(zygote.read_text())
            out["zygote"] = zpid
            services = set(out.values())
            clients = [
                p.pid
                for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and "services/launcher/client.py" in " ".join(p.info["cmdline"])
                and str(run_dir) in " ".join(p.info["cmdline"]) and p.pid not in services
            ]
            for i, pid in enumerate(sorted(clients)):
                out[f"client-{i}"] = pid
        except (OSError, ValueError):
            pass
    return out


def one_run(capture: Path, decoders: int, launcher: str) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="pks-", dir="/tmp"))
    run_dir = tmp / "run"
    peaks: dict[str, dict[str, float]] = {}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture), "--learning", "0"]
            + ["--decoders", str(decoders), "--run-dir", str(run_dir), "--state-dir", str(tmp / "state")]
            + ["--launcher", launcher, "--json"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        keys = Keys()
        r = cfg = None
        while proc.poll() is None:
            if cfg is None and (run_dir / "pipeline.json").exists():
                try:
                    cfg = PipelineConfig.load(run_dir / "pipeline.json")
                except ValueError:
                    cfg = None
            if r is None and cfg is not None and (run_dir / "redis.sock").exists():
                r = redis.Redis(unix_socket_path=str(run_dir / "redis.sock"), decode_responses=True)
            with contextlib.suppress(redis.RedisError):
                _sample(_processes(run_dir, r, keys, cfg), peaks)
            time.sleep(0.05)
        if proc.returncode != 0:
            raise SystemExit(f"pktscope run --launcher {launcher} failed ({proc.returncode})")
        return peaks
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_launcher_memory", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--launchers", default="exec,fork")
    args = ap.parse_args(argv)
    launchers = args.launchers.split(",")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[str, list[dict[str, dict[str, float]]]] = {launcher: [] for launcher in launchers}
    for _ in range(args.runs):
        for launcher in launchers:
            runs[launcher].append(one_run(args.capture, args.decoders, launcher))
    print(f"{args.capture.name}, {args.decoders} decoder(s), median of {args.runs} peaks (MB); load before {load}")
    for launcher in launchers:
        print(f"  --launcher {launcher}:        RSS      PSS      USS")
        names = sorted({n for run in runs[launcher] for n in run if not n.startswith("client-")})
        for name in names:
            cells = [
                statistics.median(run[name][f] for run in runs[launcher] if name in run) for f in ("rss", "pss", "uss")
            ]
            print(f"    {name:18} " + " ".join(f"{c:8.1f}" for c in cells))
        clients = [v for run in runs[launcher] for n, v in run.items() if n.startswith("client-")]
        if clients:
            cells = [statistics.median(c[f] for c in clients) for f in ("rss", "pss", "uss")]
            print(f"    {'one client':18} " + " ".join(f"{c:8.1f}" for c in cells) + f"  (x{len(clients) // len(runs[launcher])})")
        total = statistics.median(sum(v["pss"] for v in run.values()) for run in runs[launcher])
        print(f"    {'sum of PSS':18} {total:17.1f}")
    print("load after " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
