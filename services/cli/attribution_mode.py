"""Which attribution mode a run uses and why, for the run banner and `pktscope status`."""

from __future__ import annotations

import sys

import redis

from shared.config import PipelineConfig
from shared.redis_keys import Keys


def bpf_unavailable() -> str:
    """Why the kernel-event path cannot load here ("" when it should)."""
    from services.procwatch.loader import BpfUnavailable, precheck

    try:
        precheck()
    except BpfUnavailable as exc:
        return str(exc)
    return ""


def describe(cfg: PipelineConfig) -> str:
    """The mode as configured, checked before anything starts."""
    if not cfg.live:
        return "off (offline replay: flows are attributed to hosts)"
    if not cfg.detector.attribute_processes:
        return "off"
    if cfg.detector.attribution == "psutil":
        return "psutil (socket-table polling, as asked with --attribution psutil)"
    reason = bpf_unavailable()
    if reason:
        return f"psutil (kernel events unavailable: {reason})"
    return "kernel events (eBPF tracepoints, procwatch), psutil for sockets opened before it started"


def from_stats(stats: dict[str, dict], cfg_live: bool | None = None) -> str:
    """The mode a running (or finished) pipeline reports: procwatch's own word, else the detector's."""
    pw = stats.get("procwatch")
    det: dict = {}  # every detector's counters summed (one, or several shards)
    for name, values in stats.items():
        if name == "detector" or name.startswith("detector-"):
            for key, value in values.items():
                if key == "unattributed" or key.startswith("attribution."):
                    det[key] = _count(det.get(key)) + _count(value)
    if pw and pw.get("mode"):
        mode, reason = pw.get("mode"), pw.get("reason", "")
        text = f"{mode} ({reason})" if reason else str(mode)
        lost = _count(pw.get("sock_lost")) + _count(pw.get("proc_lost")) + _count(pw.get("facts_dropped"))
        return text + _figures(det) + (f"; {lost:,} kernel events lost" if lost else "")
    if any(k.startswith("attribution.") for k in det):
        return "psutil (socket-table polling)" + _figures(det)
    if cfg_live is False:
        return "off (offline replay: flows are attributed to hosts)"
    return ""


def tell_fallback(r: redis.Redis, keys: Keys, run_id: str) -> bool:
    """Once procwatch has reported: print a line when it fell back to psutil. True when done."""
    try:
        mode, reason, rid = r.hmget(keys.stats("procwatch"), "mode", "reason", "run_id")
    except redis.RedisError:
        return False
    if rid != run_id or not mode:
        return False
    if mode != "bpf":
        print(f"pktscope: attribution fell back to psutil: {reason}", file=sys.stderr)
    return True


def _count(value) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0


def _figures(det: dict) -> str:
    """How many first lookups found their process, and how many did not (counted, never silent)."""
    found = _count(det.get("attribution.attributed")) + _count(det.get("attribution.fallback_attributed"))
    missed = _count(det.get("unattributed"))
    return f"; {found:,} lookups attributed, {missed:,} flows unattributed" if found or missed else ""
