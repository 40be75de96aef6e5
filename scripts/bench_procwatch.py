"""Benchmark of kernel-event attribution (not a test; needs root, BTF and the built object).

1. Cost of the kernel path: a C generator opens TCP connections to a server on lo at a target
   rate (SO_LINGER 0, so no TIME_WAIT exhausts the ports) while procwatch's reader runs in this
   process, turning every record into a fact and publishing it (ZeroMQ PUB, as the service
   does). Reported: the reader's CPU seconds per second per 1,000 connections/s, the BPF
   programs' own run time (kernel.bpf_stats_enabled), and events lost: connections the
   generator made minus connect facts read, and the kernel-side loss counters.
2. End-to-end alert latency: `pktscope run -i lo --learning 0`; N uniquely named short-lived
   programs (connect, send 200 bytes, exit) run one after another; latency = from just before
   the program is started to the `new_process_egress` alert arriving on the PUB socket.

Usage:
    sudo .venv/bin/python -m scripts.bench_procwatch [--rates 1000,10000] [--seconds 5] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENERATOR_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    double rate = atof(argv[1]), seconds = atof(argv[2]);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(ls, (struct sockaddr *)&a, sizeof a); listen(ls, 4096);
    socklen_t al = sizeof a; getsockname(ls, (struct sockaddr *)&a, &al);
    pid_t srv = fork();
    if (srv == 0) { for (;;) { int c = accept(ls, 0, 0); if (c >= 0) close(c); } }
    struct linger lg = {1, 0};
    long made = 0; double start = now(), end = start + seconds;
    while (now() < end) {
        double due = start + made / rate;
        while (now() < due) ;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) made++;
        close(fd);
    }
    double took = now() - start;
    kill(srv, SIGKILL); waitpid(srv, 0, 0);
    printf("%ld %f %d\n", made, took, ntohs(a.sin_port));
    return 0;
}
"""


def bpf_runtime_ns() -> int:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return sum(
        p.get("run_time_ns", 0) for p in json.loads(out.stdout) if str(p.get("name", "")).startswith("on_")
    )


def kernel_cost(rates: list[int], seconds: float, tmp: Path) -> list[dict]:
    import zmq

    from services.procwatch.events import EV_SOCK, parse
    from services.procwatch.loader import BpfProgram
    from services.procwatch.service import ProcwatchService
    from shared.config import PipelineConfig
    from shared.service import StopFlag

    gen = tmp / "conngen"
    (tmp / "conngen.c").write_text(GENERATOR_C)
    subprocess.run(["gcc", "-O2", "-o", str(gen), str(tmp / "conngen.c")], check=True)
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    cfg = PipelineConfig(run_dir=str(tmp))
    svc = ProcwatchService(cfg, StopFlag())

    class _Stats:  # the service's counters without Redis
        from collections import Counter

        c: Counter = Counter()

    svc.stats = _Stats()  # type: ignore[assignment]
    connects: list[int] = []

    def on_record(raw: bytes) -> None:
        ev = parse(raw)
        if ev is not None and ev.kind == EV_SOCK and ev.proto == 6 and ev.comm == "conngen":
            connects.append(ev.lport)
        svc.on_record(raw)

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp}/bench.ipc")
    prog = BpfProgram(on_record)
    results = []
    try:
        for rate in rates:
            connects.clear()
            lost0 = prog.lost()
            ns0, cpu0 = bpf_runtime_ns(), time.process_time()
            gen_proc = subprocess.Popen(
                [str(gen), str(rate), str(seconds)], stdout=subprocess.PIPE, text=True
            )
            while gen_proc.poll() is None:
                prog.poll(50)
                svc.publish(pub)
            drain_until = time.monotonic() + 2.0
            while time.monotonic() < drain_until:
                prog.poll(50)
                svc.publish(pub)
            cpu = time.process_time() - cpu0
            kernel_s = (bpf_runtime_ns() - ns0) / 1e9
            made, took, _port = gen_proc.stdout.read().split()
            made, took = int(made), float(took)
            lost = {k: v - lost0.get(k, 0) for k, v in prog.lost().items()}
            achieved = made / took
            results.append(
                {
                    "target_rate": rate,
                    "connections": made,
                    "achieved_rate": round(achieved),
                    "reader_cpu_s_per_s": round(cpu / took, 3),
                    "reader_cpu_s_per_s_per_1k": round(cpu / took / (achieved / 1000), 4),
                    "bpf_cpu_s_per_s": round(kernel_s / took, 4),
                    "connect_facts": len(connects),
                    "missed": max(0, made - len(connects)),  # ports repeat (RST close): count, not set
                    "kernel_lost": lost,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    finally:
        prog.close()
        pub.close(linger=0)
        ctx.term()
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    return results


def alert_latency(runs: int, tmp: Path) -> dict:
    import msgpack
    import zmq

    from tests.procwatch_helpers import HttpResponder, build

    http = HttpResponder()
    exe = build(tmp, "tcpsend")
    bindir = tmp / "bin"
    bindir.mkdir()
    run_dir, log = tmp / "run", open(tmp / "pktscope.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "services.cli.main", "run", "-i", "lo", "--bpf", f"tcp port {http.port}"]
    cmd += [
        "--decoders",
        "1",
        "--learning",
        "0",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(tmp / "state"),
    ]
    pipe = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    latencies: list[float] = []
    missed = 0
    try:
        from shared.config import PipelineConfig
        from shared.redis_conn import connect

        deadline = time.time() + 60
        while not (run_dir / "pipeline.json").exists():
            time.sleep(0.1)
        cfg = PipelineConfig.load(run_dir / "pipeline.json")
        while time.time() < deadline:
            try:
                r = connect(cfg.effective_redis_url)
                if int(r.hget("pktscope:stats:capture", "frames_out") or 0) > 0:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"new_process_egress")
        sub.connect(cfg.alerts_pub_endpoint)
        time.sleep(0.5)
        for i in range(runs):
            prog = bindir / f"lat-{i:04d}"
            shutil.copy2(exe, prog)
            t0 = time.time()
            subprocess.run([str(prog), "127.0.0.1", str(http.port), "200"], check=True)
            got = None
            while got is None and time.time() - t0 < 15:
                if sub.poll(100):
                    _kind, body = sub.recv_multipart()
                    alert = msgpack.unpackb(body, raw=False)
                    if alert["entity"] == str(prog):
                        got = time.time() - t0
            if got is None:
                missed += 1
            else:
                latencies.append(got)
        sub.close(linger=0)
    finally:
        pipe.send_signal(2)
        pipe.wait(timeout=60)
        http.close()
    latencies.sort()

    def pct(p: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else -1
        )

    return {"runs": runs, "alerts": len(latencies), "missed": missed, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pks-bench-", dir="/tmp") as d:
        tmp = Path(d)
        cost = kernel_cost(
            [int(x) for x in args.rates.split(",")],
            args.seconds,
            tmp / "k" if (tmp / "k").mkdir() is None else tmp,
        )
        lat = (
            None
            if args.skip_latency
            else alert_latency(args.runs, tmp / "l" if (tmp / "l").mkdir() is None else tmp)
        )
    print(
        json.dumps(
            {
                "kernel_path": cost,
                "alert_latency": lat,
                "load": os.getloadavg(),
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
