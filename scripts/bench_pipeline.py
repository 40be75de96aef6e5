"""The pipeline benchmark behind scripts/bench: pktscope end to end and per stage vs nfstream.

End to end = from capture's first packet read to the detector's end of stream (so process start
and supervisord/Redis start-up are left out, as nfstream's interpreter start-up is). Per stage
= packets / CPU seconds that stage's processes used (decoders summed). Median of --runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"

NFSTREAM_SNIPPET = """
import sys, time
from nfstream import NFStreamer
t = time.perf_counter()
flows = sum(1 for _ in NFStreamer(source=sys.argv[1], n_meters=int(sys.argv[2]), statistical_analysis=False))
print(time.perf_counter() - t, flows)
"""


def run_pipeline(capture: Path, decoders: int, extra: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pkb-", dir="/tmp"))
    try:
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "run",
                "--read",
                str(capture),
                "--decoders",
                str(decoders),
                "--run-dir",
                str(tmp / "run"),
                "--state-dir",
                str(tmp / "state"),
                "--json",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"pktscope run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["wall"] = wall
        summary["stage_cpu"] = stage_cpu(tmp / "state")
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_cpu(state_dir: Path) -> dict[str, float]:
    """CPU seconds per stage, from the stats the services left in the (saved) private Redis."""
    from shared.redis_keys import Keys

    proc, url = start_redis_on(state_dir)
    try:
        import redis

        r = redis.Redis.from_url(url, decode_responses=True)
        keys = Keys()
        out: dict[str, float] = {}
        for name in r.smembers(keys.services()):
            cpu = float(r.hget(keys.stats(name), "cpu_seconds") or 0)
            stage = name.split("-")[0]
            out[stage] = out.get(stage, 0.0) + cpu
        return out
    finally:
        proc.terminate()
        proc.wait()


def start_redis_on(state_dir: Path) -> tuple[subprocess.Popen, str]:
    return start_redis_server(state_dir / "bench.sock", state_dir, "pktscope.rdb")


def run_nfstream(capture: Path, meters: int) -> tuple[float, int] | None:
    proc = subprocess.run(
        [sys.executable, "-c", NFSTREAM_SNIPPET, str(capture), str(meters)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"nfstream failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    seconds, flows = proc.stdout.split()
    return float(seconds), int(flows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-nfstream", action="store_true")
    ap.add_argument("--nfstream-meters", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument(
        "--extra", default="", help="extra `pktscope run` flags, quoted, e.g. --extra '--batch-size 512'"
    )
    args = ap.parse_args(argv)
    extra = ["--learning", "0", *shlex.split(args.extra)]

    runs = [run_pipeline(args.capture, args.decoders, extra) for _ in range(args.runs)]
    packets = runs[0]["packets"]
    e2e = statistics.median(r["elapsed"] for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    stages = {s: statistics.median(r["stage_cpu"].get(s, 0.0) for r in runs) for s in runs[0]["stage_cpu"]}
    print(f"capture: {args.capture} ({packets:,} packets), {args.decoders} decoder(s), median of {args.runs}")
    print(
        f"pktscope end to end: {e2e:.2f} s = {packets / e2e:,.0f} packets/s "
        f"(whole command incl. start-up: {wall:.2f} s); flows {runs[0]['flows']:,}, alerts {runs[0]['alerts']:,}"
    )
    for stage in ("capture", "decoder", "flowtracker", "detector"):
        cpu = stages.get(stage, 0.0)
        if cpu:
            print(f"  {stage:12} {cpu:6.2f} CPU s = {packets / cpu:>10,.0f} packets per CPU second")
    result = {
        "packets": packets,
        "decoders": args.decoders,
        "pktscope_seconds": e2e,
        "pktscope_wall": wall,
        "pktscope_pps": packets / e2e,
        "stage_cpu_seconds": stages,
    }
    if not args.no_nfstream:
        nf = [run_nfstream(args.capture, args.nfstream_meters) for _ in range(args.runs)]
        if all(nf):
            nf_s = statistics.median(n[0] for n in nf)  # type: ignore[index]
            print(
                f"nfstream ({args.nfstream_meters} meter): {nf_s:.2f} s = {packets / nf_s:,.0f} packets/s, "
                f"{nf[0][1]:,} flows"
            )  # type: ignore[index]
            print(f"ratio pktscope/nfstream: {nf_s / e2e:.2f}")
            result.update(nfstream_seconds=nf_s, nfstream_pps=packets / nf_s, ratio=nf_s / e2e)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
