"""Benchmark (not a test, needs root): splitting live capture of one interface over C processes.

Two ways to give each of C capture processes a flow-consistent share of the traffic (issue 15):

* ``fanout``: AF_PACKET fanout, hash mode (services/capture/sources.py ``join_fanout``): the
  kernel hands each packet to one socket of the group.
* ``bpf``: every process opens the interface with a BPF filter that keeps its partition only,
  a symmetric hash of addresses and ports modulo C (``partition_filter``); every socket's filter
  runs on every packet.

Each reader is a process doing the capture's per-packet work (pypcap dispatch, ``bytes()``, the
flow hash and shard of services/capture/sharding.py, a batch list) without the ZeroMQ send. A
separate Python process sends UDP datagrams to 127.0.0.1:P from 64 source ports at a target
rate (as scripts/bench_live.py). Reported per mode and C: packets each reader got, libpcap
drops, the readers' CPU per packet, and the sender's CPU (on lo the kernel's delivery to the
sockets, filters included, runs in the sender's context). Usage:

    sudo .venv/bin/python -m scripts.bench_capture_split [--rate 100000] [--seconds 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench_live import BLASTER  # the same UDP sender

ROOT = Path(__file__).resolve().parent.parent


def partition_filter(base: str, part: int, parts: int) -> str:
    """``base`` and packets of partition ``part`` of ``parts``: a symmetric hash (xor of both
    addresses and both ports), IPv4 fragments by addresses; non-IPv4 to partition 0."""
    if parts <= 1:
        return base
    frag0 = "ip[6:2] & 0x1fff = 0"
    addrs = "ip[12:4] ^ ip[16:4]"
    terms = [
        f"(tcp and {frag0} and ({addrs} ^ tcp[0:2] ^ tcp[2:2]) % {parts} = {part})",
        f"(udp and {frag0} and ({addrs} ^ udp[0:2] ^ udp[2:2]) % {parts} = {part})",
        f"(ip and not ((tcp or udp) and {frag0}) and ({addrs}) % {parts} = {part})",
    ]
    if part == 0:
        terms.append("(not ip)")
    return f"({base}) and ({' or '.join(terms)})"


def reader(mode: str, part: int, parts: int, base: str, group: int) -> int:
    """One capture-like reader until SIGINT; prints its counts as JSON."""
    from services.capture.sharding import make_sharder
    from services.capture.sources import LiveSource

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    bpf = partition_filter(base, part, parts) if mode == "bpf" else base
    source = LiveSource("lo", bpf, fanout_group=group if mode == "fanout" and parts > 1 else None)
    shard = make_sharder(source.linktype, 2)
    batches: list[list] = [[], []]
    state = {"n": 0}

    def on_packet(ts: float, data) -> None:
        state["n"] += 1
        data = bytes(data)
        b = batches[shard(data)]
        b.append((state["n"], ts, 1, len(data), data))
        if len(b) >= 512:
            b.clear()

    print("ready", flush=True)
    cpu0 = time.process_time()
    while not stop:
        source.poll(0.05, on_packet)
    cpu = time.process_time() - cpu0
    recv, drop, ifdrop = source.stats()
    print(json.dumps({"packets": state["n"], "cpu": cpu, "pcap_recv": recv, "pcap_drop": drop}), flush=True)
    return 0


def run_once(mode: str, parts: int, rate: int, seconds: float) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # an open port: no ICMP errors
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        port = sink.getsockname()[1]
        base = f"udp dst port {port}"
        group = (os.getpid() + parts) & 0xFFFF
        readers = [
            subprocess.Popen(
                [sys.executable, "-m", "scripts.bench_capture_split", "--reader", mode, str(k), str(parts),
                 base, str(group)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            for k in range(parts)
        ]
        try:
            for r in readers:
                assert r.stdout is not None and r.stdout.readline().strip() == "ready"
            time.sleep(0.3)
            blaster = subprocess.run(
                [sys.executable, "-c", BLASTER, str(port), str(rate), str(seconds)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            sent, took, s_user, s_sys = blaster.stdout.split()
            time.sleep(1.0)  # drain
            for r in readers:
                r.send_signal(signal.SIGINT)
            results = [json.loads(r.communicate(timeout=30)[0].strip().splitlines()[-1]) for r in readers]
        finally:
            for r in readers:
                if r.poll() is None:
                    r.kill()
    got = sum(x["packets"] for x in results)
    cpu = sum(x["cpu"] for x in results)
    return {
        "mode": mode,
        "captures": parts,
        "sent": int(sent),
        "sent_rate": int(sent) / float(took),
        "per_reader": [x["packets"] for x in results],
        "received": got,
        "pcap_drop": sum(x["pcap_drop"] for x in results),
        "reader_cpu_us_per_packet": 1e6 * cpu / got if got else 0.0,
        "max_reader_cpu_share": max(x["cpu"] for x in results) / (float(took) + 1.3),
        "sender_sys_us_per_packet": 1e6 * float(s_sys) / int(sent),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--reader":
        mode, part, parts, base, group = argv[1:6]
        return reader(mode, int(part), int(parts), base, int(group))
    ap = argparse.ArgumentParser(prog="scripts/bench_capture_split", description=__doc__)
    ap.add_argument("--rate", type=int, default=100_000, help="datagrams per second offered")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the median by drops is shown")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench_capture_split needs root (live capture on lo)")
    print(
        f"capture split on lo: {args.rate:,} datagrams/s offered for {args.seconds:.0f} s, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for mode, parts in (("single", 1), ("fanout", 2), ("bpf", 2)):
        runs = sorted(
            (run_once("fanout" if mode == "single" else mode, parts, args.rate, args.seconds) for _ in range(args.repeat)),
            key=lambda r: r["pcap_drop"],
        )
        r = runs[len(runs) // 2]
        r["mode"] = mode
        rows.append(r)
        print(
            f"  {mode:6} C={parts}: sent {r['sent']:>8,} ({r['sent_rate']:>7,.0f}/s), received {r['received']:>8,} "
            f"{r['per_reader']}, libpcap drops {r['pcap_drop']:>7,}, reader CPU {r['reader_cpu_us_per_packet']:.2f} "
            f"us/packet (busiest reader {100 * r['max_reader_cpu_share']:.0f}% of a core), "
            f"sender sys {r['sender_sys_us_per_packet']:.2f} us/packet"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
