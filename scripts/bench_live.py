"""Live benchmark (not a test, needs root): how many packets a second live capture keeps up with.

Runs `pktscope run --interface lo --bpf 'udp port P'` (private Redis, supervisord), then a
separate process sends UDP datagrams to 127.0.0.1:P at a target rate for a few seconds, with
many source ports so that the flows spread over the decoders. After a short drain the pipeline
is stopped with Ctrl-C and its summary says what was captured, decoded and dropped: by libpcap
(kernel buffer full: capture too slow) and by capture toward a decoder (decoder queue full:
decoders too slow). The port is bound by a socket that never reads, so no ICMP errors join the
traffic; on lo each datagram is captured once. The sender is a Python process on the same two
cores, so it caps the rate it can offer (about 130-140k datagrams/s here). Usage:

    sudo .venv/bin/python -m scripts.bench_live [--rates 20000,50000,100000] [--seconds 5] [--decoders 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a UDP sender at a set rate; prints: sent, seconds, its user and system CPU seconds
BLASTER = r"""
import resource, socket, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
payload = b"x" * 64
sent, start = 0, time.perf_counter()
end = start + seconds
while True:
    now = time.perf_counter()
    if now >= end:
        break
    due = int((now - start) * rate)
    while sent < due:
        socks[sent % 64].sendto(payload, ("127.0.0.1", port))
        sent += 1
    time.sleep(0.0005)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(sent, time.perf_counter() - start, ru.ru_utime, ru.ru_stime)
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(rate: int, seconds: float, decoders: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pkl-", dir="/tmp"))
    port = free_udp_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # an open port: no ICMP errors
    sink.bind(("127.0.0.1", port))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    cmd = [
        sys.executable, "-m", "services.cli.main", "run", "--interface", "lo", "--bpf", f"udp dst port {port}",
        "--decoders", str(decoders), "--run-dir", str(tmp / "run"), "--state-dir", str(tmp / "state"),
        "--learning", "0", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not _capture_running(tmp / "run"):
            time.sleep(0.1)
        time.sleep(1.0)  # every service connected
        blaster = subprocess.run(
            [sys.executable, "-c", BLASTER, str(port), str(rate), str(seconds)],
            capture_output=True,
            text=True,
        )
        sent, took = blaster.stdout.split()[:2]
        time.sleep(2.0)  # let the pipeline drain
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        return {"rate": rate, "sent": int(sent), "sent_rate": int(sent) / float(took), **summary}
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _capture_running(run_dir: Path) -> bool:
    log = run_dir / "supervisord.log"
    return log.exists() and "success: capture entered RUNNING" in log.read_text()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_live", description=__doc__)
    ap.add_argument("--rates", default="20000,50000,100000", help="datagrams per second to try")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--decoders", type=int, default=2)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench_live needs root (live capture on lo)")
    print(
        f"live on lo, {args.decoders} decoder(s), {args.seconds:.0f} s per rate, load {os.getloadavg()[0]:.2f}"
    )
    for rate in (int(r) for r in args.rates.split(",")):
        r = run_once(rate, args.seconds, args.decoders)
        drops = r["drops"]
        print(
            f"  target {rate:>7,}/s sent {r['sent_rate']:>9,.0f}/s: captured {r['packets']:>9,} of {r['sent']:,}, "
            f"decoded {r['decoded']:,}, libpcap drops {drops['libpcap']:,}, decoder-queue drops {drops['capture']:,}, "
            f"flows {r['flows']:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
