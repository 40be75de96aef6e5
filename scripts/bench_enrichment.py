"""Enrichment micro-benchmarks (not a test): what attribution, hashing and lookups cost the detector.

Four parts, each timed in wall and CPU seconds (``time.perf_counter`` / ``time.process_time``),
median of ``--runs``:

- process attribution (services/detector/enrich/attribution.py) with K real TCP connections
  on loopback, held by child processes: a cold lookup (socket-table scan plus /proc reads), a
  cached lookup, the raw ``psutil.net_connections()`` scan, and how the rate-limited refresh
  bounds the scans when new flows keep missing the cache (scans counted against lookups);
- binary identity (identity.py): the first SHA-256 of real executables (page cache warm, so
  this is the hashing cost, not the disk's) against the cached answer;
- GeoIP (geoip.py) lookups per second on the synthetic databases of scripts/mmdb_synthetic.py,
  without and with the LRU cache, and the raw geoip2 reader for comparison;
- registrable domain (domains.py, Public Suffix List) per second, without and with its cache;
- the detector engine itself on the flow events of the bench capture, GeoIP off and on (CPU of
  this process only: the Lua scripts' time in redis-server is not in it), so the share of the
  whole GeoIP signal (lookups, new_geo checks and alerts) is seen apart from pipeline noise.

    .venv/bin/python -m scripts.bench_enrichment [--runs 5] [--conns 50,500] [--no-engine] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from scripts.bench_stages import DEFAULT_CAPTURE, read_packets, run_table
from scripts.mmdb_synthetic import build_synthetic_dbs
from services.decoder.fastpath import decode_batch
from services.decoder.service import load_app_inspector
from services.detector.engine import DetectorEngine
from services.detector.enrich import domains
from services.detector.enrich.attribution import TCP, ProcessAttributor
from services.detector.enrich.geoip import GeoIP
from services.detector.enrich.identity import BinaryIdentity
from services.detector.enrichment import Enrichers
from shared import frames
from shared.config import PipelineConfig
from shared.redis_server import start_redis_server

CHILD = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.read()  # hold the connections until the parent closes our stdin
"""


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``runs`` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- process attribution ------------------------------------------------------------------------
class LoopbackConnections:
    """K established TCP connections on 127.0.0.1: server ends here, client ends in child processes."""

    def __init__(self, k: int, children: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.procs: list[subprocess.Popen] = []
        self.client_ports: list[int] = []
        per_child = [k // children + (i < k % children) for i in range(children)]
        for n in per_child:
            if n:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD, str(self.port), str(n)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
        for proc, n in zip(self.procs, [n for n in per_child if n], strict=True):
            for _ in range(n):
                self.accepted.append(self.listener.accept()[0])
            assert proc.stdout is not None
            self.client_ports += [int(p) for p in proc.stdout.readline().split()]
        assert len(self.client_ports) == k, (len(self.client_ports), k)

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()
        for s in self.accepted:
            s.close()
        self.listener.close()


def bench_attribution(k: int, runs: int, children: int) -> dict:
    conns = LoopbackConnections(k, children)
    try:
        port, clients = conns.port, conns.client_ports
        hosts = {"inet_sockets": len(psutil.net_connections(kind="inet")), "processes": len(psutil.pids())}

        def cold() -> None:
            attr = ProcessAttributor()
            assert attr.lookup(TCP, "127.0.0.1", clients[0], "127.0.0.1", port) is not None

        warm = ProcessAttributor()
        attributed = sum(warm.lookup(TCP, "127.0.0.1", p, "127.0.0.1", port) is not None for p in clients)
        assert attributed == k, f"only {attributed} of {k} connections attributed"
        passes = max(1, 20000 // k)

        def cached() -> None:
            for _ in range(passes):
                for p in clients:
                    warm.lookup(TCP, "127.0.0.1", p, "127.0.0.1", port)

        cold_wall, cold_cpu = timed(cold, runs)
        hit_wall, hit_cpu = timed(cached, runs)
        scan_wall, scan_cpu = timed(lambda: psutil.net_connections(kind="inet"), runs)
        lookups = passes * k
        return {
            "connections": k,
            **hosts,
            "cold_lookup_ms": (cold_wall * 1e3, cold_cpu * 1e3),
            "cached_lookup_us": (hit_wall / lookups * 1e6, hit_cpu / lookups * 1e6),
            "psutil_scan_ms": (scan_wall * 1e3, scan_cpu * 1e3),
            "new_flow_burst": burst(port, 200),
            "new_flows_sustained": sustained(port, rate=100, seconds=2.0),
            "flows_without_socket": no_owner(1000),
        }
    finally:
        conns.close()


def _counts(attr: ProcessAttributor, lookups: int, wall: float, cpu: float) -> dict:
    c = attr.counters
    return {
        "lookups": lookups,
        "scans": c["scans"],
        "waits": c["waits"],
        "deferred": c["deferred"],
        "attributed": c["attributed"],
        "wall_s": wall,
        "cpu_s": cpu,
        "scan_ms_last": attr.last_scan_seconds * 1e3,
    }


def burst(port: int, m: int) -> dict:
    """M new connections opened and looked up back to back (a program starting many flows at once)."""
    attr = ProcessAttributor()
    attr.lookup(TCP, "127.0.0.1", 1, "127.0.0.1", port)  # warm: the table was just scanned
    attr.counters.clear()
    socks: list[socket.socket] = []
    w, c = time.perf_counter(), time.process_time()
    try:
        for _ in range(m):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
            attr.lookup(TCP, "127.0.0.1", s.getsockname()[1], "127.0.0.1", port)
        return _counts(attr, m, time.perf_counter() - w, time.process_time() - c)
    finally:
        for s in socks:
            s.close()


def sustained(port: int, rate: int, seconds: float) -> dict:
    """New connections at ``rate`` per second, each looked up once when it opens; then re-asked once
    after the run (as the detector does for a flow's later events), to show deferred flows resolve."""
    attr = ProcessAttributor()
    socks: list[socket.socket] = []
    start = time.perf_counter()
    cpu0 = time.process_time()
    try:
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
            attr.lookup(TCP, "127.0.0.1", s.getsockname()[1], "127.0.0.1", port)
        out = _counts(attr, len(socks), time.perf_counter() - start, time.process_time() - cpu0)
        time.sleep(attr.min_refresh_interval)
        out["attributed_on_second_ask"] = sum(
            attr.lookup(TCP, "127.0.0.1", s.getsockname()[1], "127.0.0.1", port) is not None for s in socks
        )
        return out
    finally:
        for s in socks:
            s.close()


def no_owner(n: int) -> dict:
    """N flows no local socket owns (forwarded or spoofed traffic), each asked once, as fast as possible."""
    attr = ProcessAttributor()
    w, c = time.perf_counter(), time.process_time()
    for i in range(n):
        attr.lookup(TCP, "127.0.0.1", 1 + i % 1000, "192.0.2.1", 10000 + i)
    return _counts(attr, n, time.perf_counter() - w, time.process_time() - c)


# --- binary identity ----------------------------------------------------------------------------
CACHED_CALLS = 20000


def biggest_file(*dirs: str, limit: int = 1 << 30) -> str:
    """The largest regular file under these directories (at most ``limit`` bytes: hashed files are)."""
    best, size = "", 0
    for top in dirs:
        for root, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if size < st.st_size <= limit and (st.st_mode & 0o170000) == 0o100000:
                    best, size = path, st.st_size
    return best


def bench_identity(runs: int) -> list[dict]:
    files = [
        os.path.realpath("/usr/bin/python3.11"),
        "/usr/bin/redis-server",
        biggest_file("/usr/bin", "/usr/lib"),
    ]
    out = []
    for path in files:
        if not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        with open(path, "rb") as f:  # warm the page cache: measure hashing, not the disk
            while f.read(1 << 20):
                pass
        first_wall, first_cpu = timed(lambda p=path: BinaryIdentity().identity(p), runs)
        ident = BinaryIdentity()
        assert ident.identity(path)
        hit_wall, hit_cpu = timed(lambda p=path, i=ident: [i.identity(p) for _ in range(CACHED_CALLS)], runs)
        out.append(
            {
                "file": path,
                "mb": size / 1e6,
                "first_hash_ms": (first_wall * 1e3, first_cpu * 1e3),
                "mb_per_s": size / 1e6 / first_wall,
                "cached_us": (hit_wall / CACHED_CALLS * 1e6, hit_cpu / CACHED_CALLS * 1e6),
            }
        )
    # with a pid: /proc/PID/exe is read and stat'ed each time (the detector's path)
    ident, exe, pid = BinaryIdentity(), os.path.realpath(sys.executable), os.getpid()
    assert ident.identity(exe, pid)
    w, c = timed(lambda: [ident.identity(exe, pid) for _ in range(CACHED_CALLS)], runs)
    out.append(
        {"file": f"{exe} via /proc/{pid}/exe", "cached_us": (w / CACHED_CALLS * 1e6, c / CACHED_CALLS * 1e6)}
    )
    return out


# --- GeoIP and domains --------------------------------------------------------------------------
def global_addresses(n: int, seed: int = 4) -> tuple[list[str], list[str]]:
    """n globally routable IPv4 and n IPv6 (2000::/3) addresses, fixed by the seed."""
    rng = random.Random(seed)
    v4: list[str] = []
    while len(v4) < n:
        a = ipaddress.IPv4Address(rng.getrandbits(32))
        if a.is_global and not a.is_multicast:
            v4.append(str(a))
    v6: list[str] = []
    while len(v6) < n:
        a = ipaddress.IPv6Address((0x2 << 125) | rng.getrandbits(125))
        if a.is_global:
            v6.append(str(a))
    return v4, v6


def bench_geoip(runs: int, n: int = 20000) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pkb-mmdb-", dir="/tmp"))
    try:
        country_db, asn_db = build_synthetic_dbs(tmp)
        v4, v6 = global_addresses(n)
        out: dict[str, float] = {}
        for label, addrs in (("ipv4", v4), ("ipv6", v6)):
            uncached = GeoIP(str(country_db), str(asn_db), cache_size=0)
            assert all(uncached.lookup(a)[0] for a in addrs[:100]), "synthetic database misses addresses"
            wall, cpu = timed(lambda u=uncached, a=addrs: [u.lookup(x) for x in a], runs)
            out[f"{label}_uncached_per_s"] = n / wall
            out[f"{label}_uncached_per_cpu_s"] = n / cpu if cpu else 0.0
            reader = uncached._country, uncached._asn
            wall, _ = timed(lambda r=reader, a=addrs: [(r[0].country(x), r[1].asn(x)) for x in a], runs)
            out[f"{label}_raw_reader_per_s"] = n / wall
            # maxminddb's dict answer, without geoip2's model objects (what a leaner lookup could use)
            dbs = reader[0]._db_reader, reader[1]._db_reader
            wall, _ = timed(lambda r=dbs, a=addrs: [(r[0].get(x), r[1].get(x)) for x in a], runs)
            out[f"{label}_maxminddb_get_per_s"] = n / wall
            uncached.close()
        cached = GeoIP(str(country_db), str(asn_db))
        hot = v4[:1000] + v6[:1000]
        for a in hot:
            cached.lookup(a)
        wall, _ = timed(lambda: [cached.lookup(x) for _ in range(10) for x in hot], runs)
        out["cached_per_s"] = 10 * len(hot) / wall
        cached.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def host_names(n: int) -> list[str]:
    shapes = (
        "a{i}.cdn.example{j}.co.uk",
        "www.site{i}.com",
        "user{i}.github.io",
        "api.{i}.service{j}.amazonaws.com",
        "host{i}.corp.internal",
        "bücher{i}.example.de",
        "static{i}.example{j}.com.au",
        "x{i}.y.z.example{j}.org",
    )
    return [shapes[i % len(shapes)].format(i=i, j=i % 97) for i in range(n)]


def bench_domains(runs: int, n: int = 20000) -> dict:
    names = host_names(n)
    assert domains.registrable_domain(names[0]) == "example0.co.uk"

    def uncached() -> None:
        domains._registrable.cache_clear()
        for x in names:
            domains.registrable_domain(x)

    wall, cpu = timed(uncached, runs)
    hot = names[:2000]
    for x in hot:
        domains.registrable_domain(x)
    hit_wall, _ = timed(lambda: [domains.registrable_domain(x) for _ in range(10) for x in hot], runs)
    return {
        "uncached_per_s": n / wall,
        "uncached_per_cpu_s": n / cpu,
        "cached_per_s": 10 * len(hot) / hit_wall,
    }


# --- the detector engine on the bench capture ---------------------------------------------------
def capture_event_frames(capture: Path, batch: int = 512) -> list[list]:
    """The flow events of a capture, cut into frames as the flow tracker sends them."""
    packets = read_packets(capture)
    app = load_app_inspector()
    records = []
    for o in range(0, len(packets), batch):
        body = frames.decode(
            frames.encode(frames.FrameType.PACKETS, "capture", 0, packets[o : o + batch])
        ).body
        records.append(
            frames.decode(
                frames.encode(frames.FrameType.RECORDS, "d", 0, decode_batch(body, app).records)
            ).body
        )
    events = run_table(records)
    return [
        frames.decode(frames.encode(frames.FrameType.FLOWS, "flowtracker", i, events[o : o + batch])).body
        for i, o in enumerate(range(0, len(events), batch))
    ]


def bench_engine(capture: Path, runs: int, profile: bool) -> dict:
    """CPU of DetectorEngine over the capture's events (learning 0, fresh Redis), GeoIP off vs on.

    The off and on runs alternate, so that load from other work on the machine hits both alike.
    """
    ev_frames = capture_event_frames(capture)
    tmp = Path(tempfile.mkdtemp(prefix="pkb-eng-", dir="/tmp"))
    proc, url = start_redis_server(tmp / "r.sock", tmp)
    try:
        r = redis.Redis.from_url(url)
        country_db, asn_db = build_synthetic_dbs(tmp)
        configs = {"geoip_off": PipelineConfig(), "geoip_on": PipelineConfig()}
        for cfg in configs.values():
            cfg.detector.learning = 0
        configs["geoip_on"].detector.geoip_country_db = str(country_db)
        configs["geoip_on"].detector.geoip_asn_db = str(asn_db)

        def one(cfg: PipelineConfig) -> tuple[int, Enrichers]:
            r.flushall()
            enr = Enrichers.load(cfg)
            engine = DetectorEngine(r, cfg, enrichers=enr)
            raised = sum(len(engine.process(body)) for body in ev_frames) + len(engine.finish())
            return raised, enr

        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in configs}
        last: dict[str, tuple[int, Enrichers]] = {}
        for _ in range(runs):
            for label, cfg in configs.items():
                w, c = time.perf_counter(), time.process_time()
                last[label] = one(cfg)
                samples[label].append((time.perf_counter() - w, time.process_time() - c))
        out: dict = {"frames": len(ev_frames), "events": sum(len(f) for f in ev_frames)}
        for label, got in samples.items():
            alerts, enr = last[label]
            out[label] = {
                "wall_s": statistics.median(x[0] for x in got),
                "cpu_s": statistics.median(x[1] for x in got),
                "alerts": alerts,
                "geoip_counters": dict(enr.geoip.counters) if enr.geoip is not None else {},
            }
        if profile:
            path = Path(tempfile.gettempdir()) / "pkb-engine-geoip.prof"
            prof = cProfile.Profile()
            prof.runcall(one, configs["geoip_on"])
            prof.dump_stats(str(path))
            out["profile"] = str(path)
        return out
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --- report -------------------------------------------------------------------------------------
def fmt_pair(pair: tuple[float, float], unit: str) -> str:
    return f"{pair[0]:.3g} {unit} wall / {pair[1]:.3g} {unit} CPU"


def report(res: dict) -> None:
    print(f"load average: before {res['load_before']}, after {res['load_after']}; median of {res['runs']}")
    print("\nprocess attribution (loopback TCP, client ends in child processes):")
    for a in res["attribution"]:
        print(
            f"  K={a['connections']} ({a['inet_sockets']} inet sockets on the host, {a['processes']} processes)"
        )
        print(f"    cold lookup (scan + /proc):     {fmt_pair(a['cold_lookup_ms'], 'ms')}")
        print(f"    cached lookup:                  {fmt_pair(a['cached_lookup_us'], 'us')}")
        print(f"    psutil.net_connections() scan:  {fmt_pair(a['psutil_scan_ms'], 'ms')}")
        for name in ("new_flow_burst", "new_flows_sustained", "flows_without_socket"):
            b = a[name]
            extra = (
                f", {b['attributed_on_second_ask']} on a second ask"
                if "attributed_on_second_ask" in b
                else ""
            )
            print(
                f"    {name:22} {b['lookups']:5} lookups -> {b['scans']} scans, {b['waits']} waits, "
                f"{b['deferred']} deferred, {b['attributed']} attributed{extra}; "
                f"{b['wall_s']:.3f} s wall, {b['cpu_s']:.3f} s CPU"
            )
    print("\nbinary identity (SHA-256, page cache warm):")
    for i in res["identity"]:
        if "first_hash_ms" in i:
            print(
                f"  {i['file']} ({i['mb']:.1f} MB): first {fmt_pair(i['first_hash_ms'], 'ms')} "
                f"= {i['mb_per_s']:.0f} MB/s; cached {fmt_pair(i['cached_us'], 'us')}"
            )
        else:
            print(f"  {i['file']}: cached {fmt_pair(i['cached_us'], 'us')}")
    g = res["geoip"]
    print("\nGeoIP (synthetic country + ASN databases, both looked up per address):")
    for label in ("ipv4", "ipv6"):
        print(
            f"  {label} uncached: {g[f'{label}_uncached_per_s']:,.0f}/s "
            f"(geoip2 reader alone: {g[f'{label}_raw_reader_per_s']:,.0f}/s, "
            f"maxminddb .get(): {g[f'{label}_maxminddb_get_per_s']:,.0f}/s)"
        )
    print(f"  cached (LRU hit): {g['cached_per_s']:,.0f}/s")
    d = res["domains"]
    print(
        f"\nregistrable domain (PSL): uncached {d['uncached_per_s']:,.0f}/s, cached {d['cached_per_s']:,.0f}/s"
    )
    e = res.get("engine")
    if e:
        print(f"\ndetector engine on the bench capture's {e['events']:,} flow events (this process's CPU):")
        for label in ("geoip_off", "geoip_on"):
            x = e[label]
            print(
                f"  {label:9}: {x['cpu_s']:.3f} CPU s, {x['wall_s']:.3f} s wall, {x['alerts']:,} alerts"
                + (f"; GeoIP {dict(sorted(x['geoip_counters'].items()))}" if x["geoip_counters"] else "")
            )
        print(f"  GeoIP on costs {e['geoip_on']['cpu_s'] - e['geoip_off']['cpu_s']:+.3f} CPU s")
        if "profile" in e:
            print(f"  profile of one GeoIP-on run: {e['profile']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_enrichment", description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--conns", default="50,500", help="numbers of loopback TCP connections, comma separated")
    ap.add_argument("--children", type=int, default=4, help="child processes holding the client ends")
    ap.add_argument("--no-engine", action="store_true", help="skip the detector engine part")
    ap.add_argument("--profile-engine", action="store_true", help="cProfile one GeoIP-on engine run")
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE, help="for the engine part")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # K accepted sockets plus the burst's
    res: dict = {"runs": args.runs, "load_before": load()}
    res["attribution"] = [bench_attribution(int(k), args.runs, args.children) for k in args.conns.split(",")]
    res["identity"] = bench_identity(args.runs)
    res["geoip"] = bench_geoip(args.runs)
    res["domains"] = bench_domains(args.runs)
    if not args.no_engine:
        res["engine"] = bench_engine(args.capture, args.runs, args.profile_engine)
    res["load_after"] = load()
    report(res)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
