"""Benchmark (not a test): what each observation output costs a replay of the bench capture.

Runs `pktscope run --read sv-merged.pcap --learning 0 --decoders 2 --json` (979 alerts) in turns:
plain, with --eve-log, with --notify (a json:// webhook receiver on 127.0.0.1 in this process),
and with --metrics-listen (scraped once a second by this process while the replay runs: a
far denser scrape than Prometheus' usual 15 s). Each run gets a fresh state directory, so every
run raises the same alerts. Throughput is the summary's end-to-end packets/s (capture's first
packet -> detector's end of stream); a notified run also waits for its notifications after
that, which the figure leaves out (it is delivery, not replay). Prints the median per variant
and the cost relative to plain, in throughput and in CPU seconds of every process of the run
after start-up (steadier than throughput on a loaded machine). Usage:

    .venv/bin/python -m scripts.bench_observe [--runs 5] [--capture FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT.parent / "shared" / "corpus" / "bench" / "sv-merged.pcap"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink(BaseHTTPRequestHandler):
    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        Sink.posts += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def run_once(capture: Path, extra: list[str], scrape_port: int | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pkb-", dir="/tmp"))
    stop = threading.Event()
    scrapes = [0]

    def scraper() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{scrape_port}/metrics", timeout=2) as r:
                    r.read()
                    scrapes[0] += 1
            except OSError:
                pass
            stop.wait(1.0)

    if scrape_port:
        threading.Thread(target=scraper, daemon=True).start()
    try:
        cmd = [
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "--read",
            str(capture),
            "--learning",
            "0",
            "--decoders",
            "2",
            "--json",
            "--run-dir",
            str(tmp / "run"),
            "--state-dir",
            str(tmp / "state"),
            *extra,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["scrapes"] = scrapes[0]
        status = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "status", "--json", "--run-dir", str(tmp / "run")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        services = json.loads(status.stdout)["services"] if status.returncode == 0 else {}

        def cpu(s: dict) -> float:  # CPU seconds after start-up (as scripts/bench counts stages)
            return float(s.get("cpu_seconds", 0) or 0) - float(s.get("cpu_at_ready", 0) or 0)

        summary["cpu"] = sum(cpu(s) for s in services.values())  # the pipeline and observation services
        summary["cpu_detector"] = cpu(services.get("detector", {}))
        return summary
    finally:
        stop.set()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--capture", type=Path, default=CAPTURE)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"json://127.0.0.1:{server.server_address[1]}/hook"
    eve_dir = Path(tempfile.mkdtemp(prefix="pkb-eve-"))
    variants = {
        "plain": ([], None),
        "eve": (["--eve-log", str(eve_dir / "eve.json")], None),
        "notify": (["--notify", hook], None),
        "metrics": (None, "metrics"),
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}")
    for i in range(args.runs):
        for name, (extra, kind) in variants.items():
            port = None
            if kind == "metrics":
                port = free_port()
                extra = ["--metrics-listen", f"127.0.0.1:{port}"]
            (eve_dir / "eve.json").unlink(missing_ok=True)
            s = run_once(args.capture, extra, port)
            results[name].append(s["packets_per_second"])
            cpus[name].append(s["cpu"])
            note = f" scrapes {s['scrapes']}" if port else ""
            if name == "eve":
                note = f" eve lines {len((eve_dir / 'eve.json').read_bytes().splitlines())}"
            if name == "notify":
                note = f" posts so far {Sink.posts}"
            print(
                f"run {i + 1} {name:8} {s['packets_per_second']:>9,} packets/s  {s['elapsed']:.2f} s  "
                f"CPU {s['cpu']:.2f} s (detector {s['cpu_detector']:.2f} s)  alerts {s['alerts']}{note}",
                flush=True,
            )
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[:3]}")
    base, base_cpu = statistics.median(results["plain"]), statistics.median(cpus["plain"])
    for name, values in results.items():
        med, cpu = statistics.median(values), statistics.median(cpus[name])
        print(
            f"{name:8} median {med:>9,.0f} packets/s, cost {100 * (1 - med / base):+.1f}%;  "
            f"CPU {cpu:.2f} s, {100 * (cpu / base_cpu - 1):+.1f}%  (runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )
    server.shutdown()
    shutil.rmtree(eve_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
