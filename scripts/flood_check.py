"""Scripted check (issue 10): one host contacts 200,000 new destinations; pktscope must keep
raising alerts at >= 10,000 a minute and stay within its documented Redis bounds.

Builds the capture (one TCP SYN from 10.0.0.1 to each of N distinct addresses, 1 ms apart),
replays it with `pktscope run --read --learning 0`, and reports the alerts, the rate (alerts
per minute of the whole replay, wall clock), the entity's cooldown and destination key sizes
against their cap (SET_CAP), how often the cap bit, and Redis's memory. Exit 1 when a bound or
the rate is missed. Not a test: timing on a loaded machine varies (docs/benchmarks.md).

    .venv/bin/python -m scripts.flood_check [--destinations 200000] [--min-rate 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.detector.engine import SET_CAP
from services.detector.keys import DetectorKeys
from shared.redis_conn import connect
from shared.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parents[1]


def write_flood(path: Path, n: int) -> None:
    """n SYNs from 10.0.0.1 to n distinct public addresses (100.64.0.0 upwards is fine: not local)."""
    src = bytes((10, 0, 0, 1))
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(n):
            dst = struct.pack("!I", 0x0B000000 + i)  # 11.0.0.0/8: public, never local
            tcp = struct.pack("!HHIIBBHHH", 40000 + i % 20000, 443, i, 0, 5 << 4, 0x02, 65535, 0, 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
            frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp
            ts = 1_700_000_000 + i * 0.001
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--destinations", type=int, default=200_000)
    ap.add_argument("--min-rate", type=float, default=10_000, help="alerts per minute required")
    ap.add_argument("--decoders", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pks-flood-", dir="/tmp"))
    proc_redis = None
    try:
        capture = tmp / "flood.pcap"
        write_flood(capture, args.destinations)
        proc_redis, url = start_redis_server(tmp / "redis.sock", tmp)
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "run", "--read", str(capture), "--run-dir",
             str(tmp / "run"), "--redis-url", url, "--learning", "0", "--decoders", str(args.decoders),
             "--json"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        if run.returncode not in (0, 3):
            print(run.stdout, run.stderr, file=sys.stderr)
            return 1
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        r = connect(url)
        keys = DetectorKeys("pktscope")
        entity = "host:10.0.0.1"
        det = r.hgetall(keys.stats("detector"))
        figures = {
            "destinations": args.destinations,
            "alerts": summary["alerts"],
            "elapsed_s": round(elapsed, 1),
            "alerts_per_min": round(summary["alerts"] / elapsed * 60),
            "cooldown_entries": r.zcard(keys.cooldown(entity)) if r.type(keys.cooldown(entity)) == "zset"
            else r.hlen(keys.cooldown(entity)),
            "dest_members": r.scard(keys.entity_set(entity, "dest")),
            "cap": SET_CAP,
            "caps_hit": int(det.get("caps_hit", 0) or 0),
            "redis_used_memory_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 1),
            "detector_max_rss_mb": round(int(det.get("max_rss_kb", 0) or 0) / 1024, 1),
        }
        print(json.dumps(figures))
        ok = (
            figures["alerts_per_min"] >= args.min_rate
            and figures["cooldown_entries"] <= SET_CAP
            and figures["dest_members"] <= SET_CAP
            and summary["alerts"] >= args.destinations
        )
        print("flood check:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if proc_redis is not None:
            proc_redis.terminate()
            proc_redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
