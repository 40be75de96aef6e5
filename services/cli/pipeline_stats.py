"""Reading the services' stats hashes from Redis, for `run`'s summary and for `status`."""

from __future__ import annotations

import re

import redis

from shared.redis_keys import Keys

_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _typed(value: str) -> int | float | str:
    if _NUMBER.fullmatch(value):
        return float(value) if any(c in value for c in ".eE") else int(value)
    return value


def read_all(r: redis.Redis, keys: Keys, run_id: str | None = None) -> dict[str, dict]:
    """service name -> its stats (numbers typed), only those of ``run_id`` when given."""
    names = sorted(r.smembers(keys.services()))
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.stats(name))
    out = {}
    for name, raw in zip(names, pipe.execute(), strict=True):
        if not raw:
            continue
        # run ids are hex: one like "1234e5678901" or "012345678901" reads as a number, so they
        # are compared (and kept) as text; typed, such a run's stats all vanished (~1 run in 120)
        if run_id is not None and raw.get("run_id", "") != run_id:
            continue
        stats = {k: (v if k == "run_id" else _typed(v)) for k, v in raw.items()}
        out[name] = stats
    return out


def total(stats: dict[str, dict], prefix: str, field: str) -> int:
    """Sum one counter over the services whose name starts with ``prefix`` (e.g. all decoders)."""
    return sum(int(s.get(field, 0) or 0) for name, s in stats.items() if name.startswith(prefix))


def restarts(stats: dict[str, dict]) -> dict[str, int]:
    """service -> times it was restarted within the run, for those that were (the detector says so)."""
    return {name: int(s.get("restarts", 0) or 0) for name, s in sorted(stats.items()) if s.get("restarts")}


def losses(stats: dict[str, dict]) -> dict[str, int]:
    """What never made it through, by conservation between the stages and by the gap counters.

    packets: captured, less those dropped on purpose (live, full queue), less those the decoders
    took; records: sent by decoders, less taken by the flow-tracker; flows: held by a flow-tracker
    that died; frames: sequence gaps at every receiver; ends of stream lost with a dead receiver.
    """
    cap = combined(stats, "capture")  # split live capture: its instances' counts summed
    ft = combined(stats, "flowtracker")
    decoders = [s for name, s in stats.items() if name.startswith("decoder-")]
    out = {"packets": 0, "records": 0, "flows": 0, "frames": 0, "eos": 0}
    if cap and decoders:
        taken = sum(int(s.get("packets_in", 0) or 0) for s in decoders)
        out["packets"] = max(0, int(cap.get("packets", 0) or 0) - int(cap.get("dropped", 0) or 0) - taken)
    sharded = any(name.startswith("flowtracker-") for name in stats)  # DNS records go to every shard
    if ft and decoders and not sharded:
        sent = sum(int(s.get("records_out", 0) or 0) for s in decoders)
        out["records"] = max(0, sent - int(ft.get("records_in", 0) or 0))
    out["flows"] = int(ft.get("flows_lost", 0) or 0)
    for s in stats.values():
        out["frames"] += int(s.get("frames_lost", 0) or 0) + int(s.get("bad_frames", 0) or 0)
        out["eos"] += int(s.get("eos_lost", 0) or 0)
    # a sensor: flow events its queue for an unreachable pool dropped (services/flowtracker/uplink.py)
    pool_dropped = int(ft.get("pool_dropped_events", 0) or 0)
    if pool_dropped:
        out["pool_events"] = pool_dropped
    return out


def format_losses(lost: dict[str, int]) -> str:
    names = {
        "packets": "packets",
        "records": "records",
        "flows": "flows",
        "frames": "frames",
        "eos": "ends of stream",
        "pool_events": "flow events dropped for the pool",
    }
    return ", ".join(f"{names[k]} {v:,}" for k, v in lost.items() if v)


_NOT_SUMMED = frozenset(("pid", "started", "heartbeat", "index", "started_packets", "finished", "cpu_at_ready"))


def combined(stats: dict[str, dict], stage: str) -> dict:
    """One stage's stats: the service itself, or its shards' (``stage-0``, ...) counters summed;
    ``eos`` only when every shard has it, ``heartbeat`` the latest."""
    parts = [s for name, s in stats.items() if name == stage or name.startswith(stage + "-")]
    if len(parts) <= 1:
        return parts[0] if parts else {}
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, int | float) and key not in _NOT_SUMMED:
                out[key] = out.get(key, 0) + value
    out["heartbeat"] = max(float(p.get("heartbeat", 0) or 0) for p in parts)
    begun = [float(p["started_packets"]) for p in parts if p.get("started_packets")]
    if begun:
        out["started_packets"] = min(begun)  # the first instance's start, not a sum of times
    out["eos"] = 1 if all(p.get("eos") for p in parts) else 0
    out["shards"] = len(parts)
    return out


def summarize(stats: dict[str, dict]) -> dict:
    """The figures `pktscope run` prints at the end: packets, errors, flows, alerts, drops per stage."""
    cap = combined(stats, "capture")  # split live capture: its instances' counts summed
    ft = combined(stats, "flowtracker")
    det = combined(stats, "detector")
    started = float(cap.get("started_packets", 0) or 0)
    finished = float(det.get("heartbeat", 0) or 0) if det.get("eos") else 0.0
    elapsed = finished - started if started and finished > started else 0.0
    packets = int(cap.get("packets", 0) or 0)
    summary = {
        "packets": packets,
        "capture_error": cap.get("error", "") or "",
        "decoded": total(stats, "decoder-", "decoded"),
        "malformed": total(stats, "decoder-", "malformed"),
        "non_ip": total(stats, "decoder-", "non_ip"),
        "flows": int(ft.get("flows_started", 0) or 0),
        "flows_evicted": int(ft.get("evicted", 0) or 0),
        "flow_events": int(det.get("events_in", 0) or 0),
        "alerts": int(det.get("alerts", 0) or 0),
        # events the detector got behind packet time it had already handled (0 unless a stage
        # restarted or the capture's own timestamps go backwards): counted, never moved
        "late_events": int(det.get("late_events", 0) or 0),
        "drops": {
            "capture": int(cap.get("dropped", 0) or 0),
            "libpcap": int(cap.get("pcap_drop", 0) or 0) + int(cap.get("pcap_ifdrop", 0) or 0),
            "decoders_frames_lost": total(stats, "decoder-", "frames_lost"),
            "decoders_bad_frames": total(stats, "decoder-", "bad_frames"),
            "flowtracker_frames_lost": int(ft.get("frames_lost", 0) or 0),
            "flowtracker_bad_frames": int(ft.get("bad_frames", 0) or 0),
            "detector_frames_lost": int(det.get("frames_lost", 0) or 0),
            "detector_bad_frames": int(det.get("bad_frames", 0) or 0),
        },
        "restarts": restarts(stats),
        "lost": losses(stats),
        "per_decoder": {
            name: {k: int(s.get(k, 0) or 0) for k in ("packets_in", "decoded", "malformed")}
            for name, s in sorted(stats.items())
            if name.startswith("decoder-")
        },
        # which path the hot modules ran (shared/compiled.py): "compiled" or "pure" per service
        "hot_path": {name: str(s["hot_path"]) for name, s in sorted(stats.items()) if s.get("hot_path")},
        "elapsed": round(elapsed, 3),
        "packets_per_second": round(packets / elapsed) if elapsed else 0,
    }
    if "pool_dropped_events" in ft:  # a sensor: what it sent to the pool, and what it dropped
        summary["flow_events"] = int(ft.get("events_out", 0) or 0)
        summary["drops"]["pool_frames"] = int(ft.get("pool_dropped_frames", 0) or 0)
        summary["drops"]["pool_events"] = int(ft.get("pool_dropped_events", 0) or 0)
    return summary


def outages(stats: dict[str, dict], own: dict | None = None) -> dict[str, dict]:
    """who -> {count, total_s, longest_s} for every service (and ``run`` itself) that saw Redis out."""
    out = {}
    for name, s in sorted([*stats.items(), *([("run", own)] if own else [])]):
        count = int(s.get("redis_outages", 0) or 0)
        if count:
            out[name] = {
                "count": count,
                "total_s": round(int(s.get("redis_outage_ms", 0) or 0) / 1000, 1),
                "longest_s": round(int(s.get("redis_outage_longest_ms", 0) or 0) / 1000, 1),
            }
    return out


def stream_position(r: redis.Redis, keys: Keys) -> str:
    """The id of the alert stream's newest entry ("0-0" when empty): alerts after it are this run's."""
    last = r.xrevrange(keys.alerts(), count=1)
    return last[0][0] if last else "0-0"


def alerts_since(r: redis.Redis, keys: Keys, after: str, chunk: int = 10_000) -> int:
    """How many alerts the stream holds after entry ``after`` (read in chunks: bounded memory)."""
    count, start = 0, f"({after}"
    while True:
        entries = r.xrange(keys.alerts(), min=start, max="+", count=chunk)
        count += len(entries)
        if len(entries) < chunk:
            return count
        start = f"({entries[-1][0]}"


def format_outages(outages: dict[str, dict]) -> str:
    return ", ".join(
        f"{name} {o['count']}x (longest {o['longest_s']:.1f} s, total {o['total_s']:.1f} s)"
        for name, o in outages.items()
    )


def format_summary(s: dict, source: str, outcome: str = "done") -> str:
    drops = s["drops"]
    lines = [
        f"pktscope: {source}: {outcome}"
        + (
            f" in {s['elapsed']:.2f} s ({s['packets_per_second']:,} packets/s end to end)"
            if s["elapsed"]
            else ""
        ),
        f"  packets      {s['packets']:,} captured",
        f"  decoded      {s['decoded']:,} ({s['non_ip']:,} not IP), decode errors {s['malformed']:,}",
        f"  flows        {s['flows']:,} ({s['flows_evicted']:,} evicted at the table cap)",
        f"  flow events  {s['flow_events']:,}",
        f"  alerts       {s['alerts']:,}"
        if "pool_events" not in s["drops"]
        else "  alerts       raised by the detector pool (`pktscope alerts list` there)",
    ]
    paths = set(s.get("hot_path", {}).values())
    if paths:
        lines.append(
            "  hot path     "
            + (
                "compiled (Cython)"
                if paths == {"compiled"}
                else ", ".join(f"{k} {v}" for k, v in s["hot_path"].items())
            )
        )
    if s.get("late_events"):
        lines.append(f"  late events  {s['late_events']:,} (behind packet time already handled; counted)")
    lines += [
        "  drops        " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in drops.items()),
    ]
    if s["restarts"]:
        lines.append("  restarts     " + ", ".join(f"{k} {v:,}" for k, v in s["restarts"].items()))
    if any(s.get("lost", {}).values()):
        lines.append("  LOST         " + format_losses(s["lost"]))
    if s.get("redis_outages"):
        lines.append("  redis out    " + format_outages(s["redis_outages"]))
    if s["capture_error"]:
        lines.append(f"  capture error: {s['capture_error']}")
    return "\n".join(lines)
