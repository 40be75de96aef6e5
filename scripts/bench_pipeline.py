"""The pipeline benchmark behind scripts/bench: pktscope end to end and per stage vs nfstream.

End to end = from capture's first packet read to the detector's end of stream (so process start
and supervisord/Redis start-up are left out, as nfstream's interpreter start-up is). Per stage
= packets / CPU seconds that stage's processes used (decoders summed). Median of --runs.

--enrich turns on the GeoIP enrichment of the detector with synthetic databases that cover the
whole address space (scripts/mmdb_synthetic.py), so every global address is looked up and
found; the alerts are then counted by kind (new_geo shows the lookups hit). Process
attribution and binary identity only run on live capture: see scripts/bench_enrichment.py.

Whole command (issue 14): the wall time of each tool's whole command, from exec to exit (start-up,
imports, supervisord and Redis included; for nfstream its interpreter and imports), and its CPU
(user + sys of the command and every process under it, from getrusage(RUSAGE_CHILDREN): each
parent reaps its children, so grandchildren count too). ``--x5`` adds the 5x capture
(../shared/bench/amplify.py --copies 5, written once to /tmp, never into the project).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.mmdb_synthetic import build_synthetic_dbs
from shared.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"
AMPLIFY = ROOT.parent / "shared" / "bench" / "amplify.py"
X5_CAPTURE = Path("/tmp/pktscope-bench-x5.pcap")

NFSTREAM_SNIPPET = """
import sys, time
from nfstream import NFStreamer
t = time.perf_counter()
flows = sum(1 for _ in NFStreamer(source=sys.argv[1], n_meters=int(sys.argv[2]), statistical_analysis=False))
print(time.perf_counter() - t, flows)
"""


def children_cpu() -> float:
    """User + sys seconds of every reaped descendant so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def x5_capture() -> Path:
    """The 5x bench capture (54k flows, 917k packets), written once to /tmp."""
    if not X5_CAPTURE.exists():
        part = X5_CAPTURE.with_suffix(".part")
        subprocess.run(
            [sys.executable, str(AMPLIFY), str(DEFAULT_CAPTURE), str(part), "--copies", "5"], check=True
        )
        part.rename(X5_CAPTURE)
    return X5_CAPTURE


def run_pipeline(capture: Path, decoders: int, extra: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pkb-", dir="/tmp"))
    try:
        cpu = children_cpu()
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
        cpu = children_cpu() - cpu
        if proc.returncode != 0:
            raise SystemExit(f"pktscope run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["wall"] = wall
        summary["cpu"] = cpu
        summary["stage_cpu"], summary["alert_kinds"] = saved_stats(tmp / "state")
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def saved_stats(state_dir: Path) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds per stage and alerts per kind, from what the run left in its (saved) private Redis.

    The kinds map also holds the detector's "(suppressed)" and "(geoip_errors)" counters.
    """
    from shared.redis_keys import Keys

    proc, url = start_redis_on(state_dir)
    try:
        import redis

        r = redis.Redis.from_url(url, decode_responses=True)
        keys = Keys()
        out: dict[str, float] = {}
        for name in r.smembers(keys.services()):
            cpu, at_ready, rss = r.hmget(keys.stats(name), "cpu_seconds", "cpu_at_ready", "max_rss_kb")
            stage = name.split("-")[0]
            out[stage + ":rss_mb"] = max(out.get(stage + ":rss_mb", 0.0), float(rss or 0) / 1024)
            out[stage] = out.get(stage, 0.0) + float(cpu or 0)
            # the same without start-up (imports, connecting): the stage's work on the packets
            out[stage + ":work"] = out.get(stage + ":work", 0.0) + float(cpu or 0) - float(at_ready or 0)
        kinds: dict[str, int] = {}
        for _id, fields in r.xrange(keys.alerts()):
            kinds[fields["kind"]] = kinds.get(fields["kind"], 0) + 1
        # novel facts the cooldown held back, and lookups that raised
        held = r.hmget(keys.stats("detector"), "alerts_suppressed", "geoip_errors")
        kinds.update(
            {f"({name})": int(v or 0) for name, v in zip(("suppressed", "geoip_errors"), held, strict=True)}
        )
        return out, kinds
    finally:
        proc.terminate()
        proc.wait()


def start_redis_on(state_dir: Path) -> tuple[subprocess.Popen, str]:
    return start_redis_server(state_dir / "bench.sock", state_dir, "pktscope.rdb", aof=True)  # what a start loads


def run_nfstream(capture: Path, meters: int) -> tuple[float, int, float, float] | None:
    """(seconds of the stream itself, flows, whole-command wall, whole-command CPU) or None."""
    cpu = children_cpu()
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", NFSTREAM_SNIPPET, str(capture), str(meters)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        print(f"nfstream failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    seconds, flows = proc.stdout.split()
    return float(seconds), int(flows), wall, cpu


def _load() -> str:
    """1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument(
        "--x5", action="store_true", help="then the same on the 5x capture (amplify.py --copies 5)"
    )
    ap.add_argument("--decoders", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-nfstream", action="store_true")
    ap.add_argument("--nfstream-meters", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument(
        "--enrich",
        action="store_true",
        help="GeoIP enrichment on, with synthetic country and ASN databases covering all addresses",
    )
    ap.add_argument(
        "--extra", default="", help="extra `pktscope run` flags, quoted, e.g. --extra '--batch-size 512'"
    )
    args = ap.parse_args(argv)
    results = [bench_one(args, args.capture)]
    if args.x5:
        results.append(bench_one(args, x5_capture()))
    print(
        f"\nwhole command, median of {args.runs}, taking turns (wall s / CPU s, user+sys of all processes):"
    )
    for res in results:
        line = f"  {Path(res['capture']).name:22} pktscope {res['pktscope_wall']:6.2f} / {res['pktscope_cpu']:6.2f}"
        if "nfstream_wall" in res:
            line += (
                f"   nfstream {res['nfstream_wall']:6.2f} / {res['nfstream_cpu']:6.2f}"
                f"   speed-up (nfstream wall / pktscope wall) {res['nfstream_wall'] / res['pktscope_wall']:.2f}"
                f", CPU per packet pktscope/nfstream {res['pktscope_cpu'] / res['nfstream_cpu']:.2f}"
            )
        print(line)
    print(f"load average after: {_load()}")
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


def bench_one(args: argparse.Namespace, capture: Path) -> dict:
    """One capture: both tools taking turns, --runs times; prints the figures and returns them."""
    load_before = _load()
    extra = ["--learning", "0", *shlex.split(args.extra)]
    mmdb_dir = Path(tempfile.mkdtemp(prefix="pkb-mmdb-", dir="/tmp"))
    try:
        if args.enrich:
            country_db, asn_db = build_synthetic_dbs(mmdb_dir)
            extra += ["--geoip-country-db", str(country_db), "--geoip-asn-db", str(asn_db)]
        # pktscope and nfstream take turns, so that both see the machine in the same moods
        # (its speed drifts by 20% within minutes); the ratio is of the two medians
        runs, nf = [], []
        for _ in range(args.runs):
            runs.append(run_pipeline(capture, args.decoders, extra))
            if not args.no_nfstream:
                nf.append(run_nfstream(capture, args.nfstream_meters))
    finally:
        shutil.rmtree(mmdb_dir, ignore_errors=True)
    packets = runs[0]["packets"]
    e2e = statistics.median(r["elapsed"] for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    whole_cpu = statistics.median(r["cpu"] for r in runs)
    stages = {s: statistics.median(r["stage_cpu"].get(s, 0.0) for r in runs) for s in runs[0]["stage_cpu"]}
    print(f"\ncapture: {capture} ({packets:,} packets), {args.decoders} decoder(s), median of {args.runs}")
    print(
        "enrichment: "
        + ("GeoIP on (synthetic country + ASN databases)" if args.enrich else "off (no GeoIP databases)")
        + f"; load average before the runs {load_before}"
    )
    print(
        f"pktscope end to end: {e2e:.2f} s = {packets / e2e:,.0f} packets/s "
        f"(whole command incl. start-up: {wall:.2f} s wall, {whole_cpu:.2f} s CPU); flows {runs[0]['flows']:,}, alerts {runs[0]['alerts']:,}"
    )
    kinds = runs[0]["alert_kinds"]
    print("  alerts by kind: " + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())))
    for stage in ("capture", "decoder", "flowtracker", "detector"):
        cpu = stages.get(stage, 0.0)
        if cpu:
            work = stages.get(stage + ":work", 0.0)
            rss = stages.get(stage + ":rss_mb", 0.0)
            print(
                f"  {stage:12} {cpu:6.2f} CPU s ({work:.2f} s after start-up) = "
                f"{packets / work if work > 0 else 0:>10,.0f} packets per work CPU second; "
                f"peak RSS {rss:.0f} MB per process"
            )
    result = {
        "capture": str(capture),
        "pktscope_cpu": whole_cpu,
        "packets": packets,
        "decoders": args.decoders,
        "pktscope_seconds": e2e,
        "pktscope_wall": wall,
        "pktscope_pps": packets / e2e,
        "stage_cpu_seconds": stages,
        "enrich": args.enrich,
        "alerts": runs[0]["alerts"],
        "alert_kinds": kinds,
        "load_before": load_before,
    }
    if not args.no_nfstream and all(nf):
        nf_s = statistics.median(n[0] for n in nf)  # type: ignore[index]
        nf_wall = statistics.median(n[2] for n in nf)  # type: ignore[index]
        nf_cpu = statistics.median(n[3] for n in nf)  # type: ignore[index]
        print(
            f"nfstream ({args.nfstream_meters} meter): {nf_s:.2f} s = {packets / nf_s:,.0f} packets/s, "
            f"{nf[0][1]:,} flows (whole command: {nf_wall:.2f} s wall, {nf_cpu:.2f} s CPU)"
        )  # type: ignore[index]
        result.update(nfstream_wall=nf_wall, nfstream_cpu=nf_cpu)
        print(f"ratio pktscope/nfstream: {nf_s / e2e:.2f}")
        result.update(nfstream_seconds=nf_s, nfstream_pps=packets / nf_s, ratio=nf_s / e2e)
    result["load_after"] = _load()
    print(f"load average after: {result['load_after']}")
    return result


if __name__ == "__main__":
    sys.exit(main())
