"""The process behind each flow-log line (live runs): the same join as the detector's.

The flow-tracker subscribes to procwatch's socket facts itself (a second SUB on its PUB
socket) rather than waiting for the detector, so a flow-log line is written when the flow
ends, as before. Without procwatch (``--attribution psutil`` or BPF unavailable) the psutil
socket-table poll answers, without ever sleeping: the flow-tracker must not stall.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.config import PipelineConfig


def flow_process_lookup(cfg: PipelineConfig) -> Callable[[dict], dict[str, Any] | None] | None:
    """``lookup(flow event map) -> process facts | None``; None on replays (host entities)."""
    if not (cfg.live and cfg.detector.attribute_processes):
        return None
    from services.detector.enrich.attribution import ProcessAttributor
    from services.detector.enrich.kernel_attribution import KernelAttributor, process_facts

    fallback = ProcessAttributor(max_wait_share=0.0)
    attributor: Any = fallback
    if cfg.procwatch_enabled:
        attributor = KernelAttributor(
            cfg.procwatch_endpoint,
            cfg.effective_redis_url,
            cfg.redis_prefix,
            fallback=fallback,
            max_wait=0.0,
            redis_cluster=cfg.redis_cluster,
        )

    def lookup(event: dict) -> dict[str, Any] | None:
        try:
            proto, first = int(event["proto"]), float(event["first"])
            ends = (event["src"], int(event["sport"]), event["dst"], int(event["dport"]))
        except (KeyError, TypeError, ValueError):
            return None
        if not event.get("outbound"):  # the local end is the responder (a server's accepted socket)
            ends = (ends[2], ends[3], ends[0], ends[1])
        try:
            info = attributor.lookup(proto, *ends, at=first)
        except Exception:
            return None
        return process_facts(info) if info is not None else None

    return lookup
