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
        stats = {k: _typed(v) for k, v in raw.items()}
        if run_id is not None and str(stats.get("run_id", "")) != run_id:
            continue
        out[name] = stats
    return out


def total(stats: dict[str, dict], prefix: str, field: str) -> int:
    """Sum one counter over the services whose name starts with ``prefix`` (e.g. all decoders)."""
    return sum(int(s.get(field, 0) or 0) for name, s in stats.items() if name.startswith(prefix))


def restarts(stats: dict[str, dict]) -> dict[str, int]:
    """service -> times it was restarted within the run, for those that were (the detector says so)."""
    return {name: int(s.get("restarts", 0) or 0) for name, s in sorted(stats.items()) if s.get("restarts")}


def combined(stats: dict[str, dict], stage: str) -> dict:
    """One stage's stats: the service itself, or its shards' (``stage-0``, ...) counters summed;
    ``eos`` only when every shard has it, ``heartbeat`` the latest."""
    parts = [s for name, s in stats.items() if name == stage or name.startswith(stage + "-")]
    if len(parts) <= 1:
        return parts[0] if parts else {}
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, int | float) and key not in ("pid", "started", "heartbeat", "index"):
                out[key] = out.get(key, 0) + value
    out["heartbeat"] = max(float(p.get("heartbeat", 0) or 0) for p in parts)
    out["eos"] = 1 if all(p.get("eos") for p in parts) else 0
    out["shards"] = len(parts)
    return out


def summarize(stats: dict[str, dict]) -> dict:
    """The figures `pktscope run` prints at the end: packets, errors, flows, alerts, drops per stage."""
    cap = stats.get("capture", {})
    ft = combined(stats, "flowtracker")
    det = combined(stats, "detector")
    started = float(cap.get("started_packets", 0) or 0)
    finished = float(det.get("heartbeat", 0) or 0) if det.get("eos") else 0.0
    elapsed = finished - started if started and finished > started else 0.0
    packets = int(cap.get("packets", 0) or 0)
    return {
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
        "per_decoder": {
            name: {k: int(s.get(k, 0) or 0) for k in ("packets_in", "decoded", "malformed")}
            for name, s in sorted(stats.items())
            if name.startswith("decoder-")
        },
        "elapsed": round(elapsed, 3),
        "packets_per_second": round(packets / elapsed) if elapsed else 0,
    }


def format_summary(s: dict, source: str) -> str:
    drops = s["drops"]
    lines = [
        f"pktscope: {source}: done"
        + (
            f" in {s['elapsed']:.2f} s ({s['packets_per_second']:,} packets/s end to end)"
            if s["elapsed"]
            else ""
        ),
        f"  packets      {s['packets']:,} captured",
        f"  decoded      {s['decoded']:,} ({s['non_ip']:,} not IP), decode errors {s['malformed']:,}",
        f"  flows        {s['flows']:,} ({s['flows_evicted']:,} evicted at the table cap)",
        f"  flow events  {s['flow_events']:,}",
        f"  alerts       {s['alerts']:,}",
    ]
    if s.get("late_events"):
        lines.append(f"  late events  {s['late_events']:,} (behind packet time already handled; counted)")
    lines += [
        "  drops        " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in drops.items()),
    ]
    if s["restarts"]:
        lines.append("  restarts     " + ", ".join(f"{k} {v:,}" for k, v in s["restarts"].items()))
    if s["capture_error"]:
        lines.append(f"  capture error: {s['capture_error']}")
    return "\n".join(lines)
