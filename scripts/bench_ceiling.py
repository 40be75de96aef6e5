"""Throughput ceiling by core count (not a test): every stage's CPU per packet, per instance.

Issue 15, acceptance 4. Runs what each service does per frame, in one process without sockets
(as scripts/bench_stages.py), but split the way the pipeline splits it, so the busiest
instance of each stage is measured, not guessed:

* capture: read the file (services/capture/sources.py), hash and shard to the decoders
  (services/capture/sharding.py), pack packet frames. Offline there is one reader; live, AF_PACKET
  fanout splits packets by a symmetric flow hash, modelled here by the same sharder: instance f
  costs its share of packets times the single reader's CPU per packet;
* decoder xN: each shard's packets (by ``make_sharder``) unpacked, decoded with every application
  layer by its own inspector, routed to the flow-trackers (shared/routing.py ``tracker_of`` and
  the DNS names copies; as many trackers as decoders), packed;
* flow-tracker xM: each shard's records (by ``tracker_of``, names copies learned only) unpacked,
  through its own flow table, events routed to the detectors (``detector_of``) and packed;
* detector xK: each shard's events (by ``detector_of``) unpacked, parsed and decided by a real
  DetectorEngine (learning 0, as ``pktscope run --learning 0``) against a private redis-server;
  the redis-server's own CPU (the Lua decisions) is measured apart from /proc, because with one
  server it is one more process every detector waits on, and with a Redis Cluster it splits.

Times are CPU seconds (``time.process_time``, redis-server's from psutil), median of ``--runs``.
Then ``ceiling()`` predicts the packets/s a machine of C cores sustains: every process may use at
most one core, and all of them together at most C (the scheduler moves processes between cores),
so with per-packet CPU ``w`` of each process the rate is ``min(1 / max w, C / sum w)``; the instance
counts of the sharded stages are chosen to maximise it. Two set-ups are predicted: offline (one
capture reader, one redis-server) and live (fanout capture processes, Redis Cluster masters).

    .venv/bin/python -m scripts.bench_ceiling [CAPTURE] [--runs 3] [--shards 1,2,4,8,16] [--cores 2,4,8,16]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from scripts.bench_stages import DEFAULT_CAPTURE
from services.capture.replay import dealer_for, drain
from services.capture.sharding import make_sharder
from services.capture.sources import OfflineSource
from services.decoder.fastpath import decode_batch
from services.decoder.service import load_app_inspector
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.service import local_nets
from services.flowtracker.table import FlowTable
from shared import frames
from shared.config import PipelineConfig
from shared.redis_server import start_redis_server
from shared.routing import NAMES_ONLY, detector_of
from shared.routing import route_records as shared_route_records
from shared.service import tune_gc

STAGES = ("capture", "decoder", "flowtracker", "detector", "redis")
SHARDED = ("decoder", "flowtracker", "detector")  # sharded in every set-up
# per set-up: which of the other stages run as several processes
SETUPS: dict[str, tuple[str, ...]] = {
    "offline (one capture reader, one redis-server)": (),
    "live (fanout capture processes, Redis Cluster masters)": ("capture", "redis"),
}

# Per stage, instance count -> CPU seconds of each instance over the whole capture.
Measured = Mapping[str, Mapping[int, Sequence[float]]]


# --- the prediction -------------------------------------------------------------------------------
@dataclass
class Plan:
    """The best allocation for one core count."""

    cores: int
    rate: float  # packets/s
    counts: dict[str, int]  # instances per stage
    used: dict[str, float]  # cores each stage keeps busy at ``rate``
    limit: str  # what sets the ceiling: "<stage> (<instance>)" for one process, or "all cores"
    single: bool  # the ceiling is set by a stage that runs as one process
    heaviest: str = ""  # when all cores are busy: the stage using most of them
    processes: int = field(default=0)


def rate_of(cores: int, per_stage: Mapping[str, Sequence[float]], packets: int) -> tuple[float, str, str]:
    """Packets/s of one allocation (per stage the CPU seconds of each instance): (rate, limit kind, stage).

    A process cannot use more than one core, so the busiest process caps the rate at
    ``packets / its CPU``; all processes share ``cores``, so the rate is also at most
    ``cores * packets / total CPU``. Kind is "process" or "cores".
    """
    busiest_stage, busiest = max(((s, max(cpus)) for s, cpus in per_stage.items()), key=lambda x: x[1])
    total = sum(sum(cpus) for cpus in per_stage.values())
    by_process = packets / busiest if busiest > 0 else float("inf")
    by_cores = cores * packets / total if total > 0 else float("inf")
    if by_process <= by_cores:
        return by_process, "process", busiest_stage
    return by_cores, "cores", max(per_stage, key=lambda s: sum(per_stage[s]))


def ceiling(cores: int, measured: Measured, packets: int, split: Iterable[str] = SHARDED) -> Plan:
    """The highest packets/s on ``cores`` over every choice of instance counts.

    Stages in ``split`` may run any measured instance count up to ``cores``; every other stage
    runs its single instance (count 1). Ties go to fewer processes (less memory, fewer sockets).
    """
    split = set(split)
    options: list[list[int]] = []
    for stage in measured:
        counts = sorted(n for n in measured[stage] if stage in split and n <= max(1, cores)) or [1]
        if stage not in split:
            counts = [1]
        options.append(counts)
    best: Plan | None = None
    for combo in itertools.product(*options):
        per_stage = {s: measured[s][n] for s, n in zip(measured, combo, strict=True)}
        rate, kind, stage = rate_of(cores, per_stage, packets)
        nproc = sum(combo)
        better = best is None or rate > best.rate * (1 + 1e-9)
        tie = best is not None and rate >= best.rate * (1 - 1e-9) and nproc < best.processes
        if not (better or tie):
            continue
        used = {s: rate * sum(cpus) / packets for s, cpus in per_stage.items()}
        counts = dict(zip(measured, combo, strict=True))
        if kind == "process":
            n = counts[stage]
            limit = stage if n == 1 else f"{stage} (busiest of {n} shards)"
            best = Plan(cores, rate, counts, used, limit, n == 1, processes=nproc)
        else:
            best = Plan(cores, rate, counts, used, "all cores", False, heaviest=stage, processes=nproc)
    assert best is not None
    return best


# --- measuring ------------------------------------------------------------------------------------
def median_cpu(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        samples.append(time.process_time() - t)
    return statistics.median(samples)


def read_capture(path: Path) -> tuple[int, list[tuple[float, bytes, int]]]:
    src = OfflineSource(str(path))
    return src.linktype, list(src.records())


def measure_capture(path: Path, batch: int, runs: int) -> float:
    """CPU seconds of the single reader: read + hash + shard (to 2 decoders) + pack, as run_offline
    (through the dealer it picks: services/capture/replay.py)."""

    def once() -> None:
        dealer = dealer_for(OfflineSource(str(path)), 2, batch)
        seq = [0, 0]
        for i, body, _count in drain(dealer, 2):
            frames.encode(frames.FrameType.PACKETS, "capture", seq[i], body)
            seq[i] += 1
        dealer.close()

    return median_cpu(once, runs)


def split_packets(lt: int, packets: list[tuple[float, bytes, int]], n: int, batch: int) -> list[list[bytes]]:
    """Each decoder shard's packet frames, as capture sends them (num counts the whole capture)."""
    shard = make_sharder(lt, n)
    parts: list[list[tuple]] = [[] for _ in range(n)]
    for num, (ts, data, wirelen) in enumerate(packets, 1):
        parts[shard(data)].append((num, ts, lt, wirelen, data))
    return [
        [frames.encode(frames.FrameType.PACKETS, "capture", s, p[o : o + batch]) for s, o in enumerate(range(0, len(p), batch))]
        for p in parts
    ]


def route_records(records: list, trackers: int) -> list[list]:
    """A decoder's records split to the flow-trackers, with names copies (as services/decoder/service.py)."""
    return [records] if trackers == 1 else shared_route_records(records, trackers)


def decode_shard(bufs: list[bytes], trackers: int, app: object) -> list[list]:
    """One decoder's work on its frames (``app``: its own inspector); the record lists it sent, per tracker."""
    sent: list[list] = [[] for _ in range(trackers)]
    for buf in bufs:
        body = frames.decode(buf).body
        parts = route_records(decode_batch(body, app).records, trackers)
        for j, part in enumerate(parts):
            if part:
                frames.encode(frames.FrameType.RECORDS, "decoder-0", 0, part)
                sent[j].append(part)
    return sent


def measure_decoders(lt: int, packets: list, n: int, batch: int, runs: int) -> list[float]:
    """CPU s of each of ``n`` decoders; the inspector is built before the clock starts (start-up)."""
    out = []
    for bufs in split_packets(lt, packets, n, batch):
        samples = []
        for _ in range(runs):
            app = load_app_inspector()
            t = time.process_time()
            decode_shard(bufs, n, app)
            samples.append(time.process_time() - t)
        out.append(statistics.median(samples))
    return out


def all_records(lt: int, packets: list, batch: int) -> list[list]:
    """The record frames (bodies) of one decoder over the whole capture."""
    return decode_shard(split_packets(lt, packets, 1, batch)[0], 1, load_app_inspector())[0]


def new_table() -> FlowTable:
    cfg = PipelineConfig()
    return FlowTable(cfg.flow, LocalMatcher(local_nets(cfg).networks))


def track_shard(bufs: list[bytes], detectors: int, batch: int, table: FlowTable) -> list[list]:
    """One flow-tracker's work: unpack, names-only copies learned, table, events routed and packed."""
    learn = table.names.learn
    events: list[list] = []
    sent: list[list] = [[] for _ in range(detectors)]

    def send(rows: list[list]) -> None:
        parts = [rows] if detectors == 1 else [[] for _ in range(detectors)]
        if detectors > 1:
            for row in rows:
                parts[detector_of(row, detectors)].append(row)
        for k, part in enumerate(parts):
            for o in range(0, len(part), batch):
                chunk = part[o : o + batch]
                frames.encode(frames.FrameType.FLOWS, "flowtracker", 0, chunk)
                sent[k].append(chunk)

    for buf in bufs:
        body = frames.decode(buf).body
        if any(r[3] == NAMES_ONLY for r in body):
            for r in body:
                if r[3] == NAMES_ONLY and isinstance(r[12], dict):
                    learn(r[12], r[1])
            body = [r for r in body if r[3] != NAMES_ONLY]
        table.add(body)
        if body:
            table.advance(body[-1][1])
        rows = table.take_rows()
        if rows:
            events += rows
            send(rows)
    table.finish("eos", float("inf"))
    rows = table.take_rows()
    events += rows
    send(rows)
    return sent


def split_records(record_frames: list[list], m: int) -> list[list[bytes]]:
    """Each flow-tracker shard's record frames, a decoder frame's part per shard."""
    out: list[list[bytes]] = [[] for _ in range(m)]
    for body in record_frames:
        for j, part in enumerate(route_records(body, m)):
            if part:
                out[j].append(frames.encode(frames.FrameType.RECORDS, "decoder-0", 0, part))
    return out


def measure_trackers(record_frames: list[list], m: int, batch: int, runs: int) -> list[float]:
    """CPU s of each of ``m`` flow-trackers; each table is built before the clock starts."""
    out = []
    for bufs in split_records(record_frames, m):
        samples = []
        for _ in range(runs):
            table = new_table()
            t = time.process_time()
            track_shard(bufs, m, batch, table)
            samples.append(time.process_time() - t)
        out.append(statistics.median(samples))
    return out


def split_events(event_frames: list[list], k: int) -> list[list[bytes]]:
    out: list[list[bytes]] = [[] for _ in range(k)]
    for body in event_frames:
        parts: list[list] = [[] for _ in range(k)]
        for row in body:
            parts[detector_of(row, k)].append(row)
        for s, part in enumerate(parts):
            if part:
                out[s].append(frames.encode(frames.FrameType.FLOWS, "flowtracker", 0, part))
    return out


class Detectors:
    """DetectorEngine shards against one private redis-server whose CPU is read from /proc."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pkb-ceil-", dir="/tmp"))
        self.proc, url = start_redis_server(self.tmp / "r.sock", self.tmp)
        self.server = psutil.Process(self.proc.pid)
        self.r = redis.Redis.from_url(url)
        self.cfg = PipelineConfig()
        self.cfg.detector.learning = 0
        self.cfg.detector.attribute_processes = False  # the replay's processes are long gone

    def server_cpu(self) -> float:
        t = self.server.cpu_times()
        return t.user + t.system

    def shard(self, bufs: list[bytes]) -> tuple[float, float, int]:
        """(detector CPU, redis-server CPU, alerts) of one shard on a fresh database."""
        self.r.flushall()
        engine = DetectorEngine(self.r, self.cfg, enrichers=Enrichers.load(self.cfg))
        s0, t = self.server_cpu(), time.process_time()
        alerts = 0
        for buf in bufs:
            alerts += len(engine.process(frames.decode(buf).body))
        alerts += len(engine.finish())
        return time.process_time() - t, self.server_cpu() - s0, alerts

    def measure(self, event_frames: list[list], k: int, runs: int) -> tuple[list[float], list[float], int]:
        det: list[float] = []
        red: list[float] = []
        alerts = 0
        for bufs in split_events(event_frames, k):
            got = [self.shard(bufs) for _ in range(runs)]
            det.append(statistics.median(g[0] for g in got))
            red.append(statistics.median(g[1] for g in got))
            alerts += got[-1][2]
        return det, red, alerts

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Measurement:
    packets: int
    cpu: dict[str, dict[int, list[float]]]  # stage -> instance count -> CPU s of each instance
    shares: dict[str, dict[int, list[int]]]  # stage -> instance count -> items each instance got
    items: dict[str, str]  # what a stage's share counts
    alerts: dict[int, int]  # detector shards -> alerts raised in total


def measure(path: Path, shards: Sequence[int], batch: int, runs: int, log: Callable[[str], None]) -> Measurement:
    lt, packets = read_capture(path)
    tune_gc()
    n = len(packets)
    cpu: dict[str, dict[int, list[float]]] = {s: {} for s in STAGES}
    shares: dict[str, dict[int, list[int]]] = {s: {} for s in STAGES}
    one = measure_capture(path, batch, runs)
    log(f"capture: {one:.3f} CPU s")
    for f in shards:  # live fanout: instance f reads its share, at the single reader's cost per packet
        sharder = make_sharder(lt, f)
        counts = [0] * f
        for _ts, data, _w in packets:
            counts[sharder(data)] += 1
        shares["capture"][f] = counts
        cpu["capture"][f] = [one * c / n for c in counts]
    for d in shards:
        cpu["decoder"][d] = measure_decoders(lt, packets, d, batch, runs)
        sharder = make_sharder(lt, d)
        counts = [0] * d
        for _ts, data, _w in packets:
            counts[sharder(data)] += 1
        shares["decoder"][d] = counts
        log(f"decoder x{d}: {sum(cpu['decoder'][d]):.3f} CPU s")
    record_frames = all_records(lt, packets, batch)
    events = track_shard(
        [frames.encode(frames.FrameType.RECORDS, "d", 0, b) for b in record_frames], 1, batch, new_table()
    )[0]
    for m in shards:
        cpu["flowtracker"][m] = measure_trackers(record_frames, m, batch, runs)
        shares["flowtracker"][m] = [
            sum(len(frames.decode(b).body) for b in s) for s in split_records(record_frames, m)
        ]
        log(f"flowtracker x{m}: {sum(cpu['flowtracker'][m]):.3f} CPU s")
    det = Detectors()
    alerts: dict[int, int] = {}
    try:
        for k in shards:
            cpu["detector"][k], red, alerts[k] = det.measure(events, k, runs)
            shares["detector"][k] = [sum(len(frames.decode(b).body) for b in s) for s in split_events(events, k)]
            log(f"detector x{k}: {sum(cpu['detector'][k]):.3f} CPU s, redis-server {sum(red):.3f}")
            if k == 1:
                total = red[0]
                # Redis Cluster masters: hash slots spread the per-entity keys, modelled as an even split
                for r in shards:
                    cpu["redis"][r] = [total / r] * r
                    shares["redis"][r] = []
    finally:
        det.close()
    items = {"capture": "packets", "decoder": "packets", "flowtracker": "records", "detector": "events", "redis": ""}
    return Measurement(n, cpu, shares, items, alerts)


# --- report ---------------------------------------------------------------------------------------
def fmt_rate(x: float) -> str:
    if x == float("inf"):
        return "inf"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.0f}k"


def report(path: Path, m: Measurement, cores: Sequence[int], runs: int, batch: int) -> str:
    lines = [
        f"{path} ({m.packets:,} packets), frames of {batch}, median of {runs}; load {os.getloadavg()[0]:.2f}",
        "",
        "Per stage and instance: the instance's share of the stage's items and packets per CPU second",
        "(capture packets / instance CPU s: the pipeline rate that instance keeps up with)",
    ]
    for stage in STAGES:
        for n, cpus in sorted(m.cpu[stage].items()):
            got = m.shares[stage].get(n) or []
            tot = sum(got)
            cells = []
            for i, c in enumerate(cpus):
                share = f"{got[i] / tot:4.0%} " if tot else ""
                cells.append(f"{share}{fmt_rate(m.packets / c) if c > 0 else 'inf'}")
            busiest = m.packets / max(cpus) if max(cpus) > 0 else float("inf")
            what = f" ({m.items[stage]})" if m.items[stage] else ""
            if n > 1 and stage == "capture":
                what += " [live fanout: share x the reader's CPU per packet]"
            elif stage == "redis":
                what = " [one server's CPU" + (", split evenly over cluster masters]" if n > 1 else "]")
            lines.append(
                f"  {stage:11} x{n:<2} CPU {sum(cpus):6.3f} s  busiest {fmt_rate(busiest):>6}/s{what}: " + ", ".join(cells)
            )
    lines.append(f"  alerts raised (learning 0), by detector shards: {m.alerts}")
    for setup, extra in SETUPS.items():
        lines += ["", f"Predicted ceiling, {setup}:", "", "| cores | packets/s | set by | instances (cap/dec/ft/det/redis) | cores used per stage |", "|---|---|---|---|---|"]
        for c in cores:
            plan = ceiling(c, m.cpu, m.packets, set(SHARDED) | set(extra))
            inst = "/".join(str(plan.counts[s]) for s in STAGES)
            used = ", ".join(f"{s} {plan.used[s]:.1f}" for s in STAGES)
            setter = plan.limit
            if plan.heaviest:
                setter = f"all cores busy (most: {plan.heaviest})"
            elif plan.single:
                setter = f"**{plan.limit}: one process**"
            lines.append(f"| {c} | {fmt_rate(plan.rate)} | {setter} | {inst} | {used} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_ceiling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512, help="packets per frame, as --batch-size")
    ap.add_argument("--shards", default="1,2,4,8,16", help="instance counts measured per sharded stage")
    ap.add_argument("--cores", default="2,4,8,16", help="core counts to predict for")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    shards = sorted({int(x) for x in args.shards.split(",")} | {1})
    cores = [int(x) for x in args.cores.split(",")]

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    m = measure(args.capture, shards, args.batch, args.runs, log)
    print(report(args.capture, m, cores, args.runs, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
