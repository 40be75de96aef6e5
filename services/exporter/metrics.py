"""The metric families, built on each scrape from the services' stats hashes (docs/redis.md).

Nothing is counted twice and nothing is kept here: every figure is read from Redis when
Prometheus asks (one pipeline of HGETALLs plus INFO memory, well under a millisecond of Redis
time), so the exporter can restart at any moment without losing anything. Counters are the
services' own, which start again at 0 with a restarted service (Prometheus treats a decrease
as a counter reset) or a new run.

Names follow Prometheus conventions: ``pktscope_`` prefix, ``_total`` on counters, base units
(``_bytes``, ``_seconds``) in the name; which service (``service="decoder-1"``) and which
stage (``stage="decoder"``) are labels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from redis.cluster import RedisCluster

from services.cli import pipeline_stats
from shared.config import PipelineConfig
from shared.observe_keys import ObserveKeys
from shared.redis_conn import is_cluster

STALE_AFTER = 5.0  # heartbeat age that counts as down (as `pktscope status`)
KINDS = ("new_process_dest", "new_process_egress", "new_geo", "volume_spike", "identity_change")

# (metric name, help, {service prefix: stats field}) for per-service counters
COUNTERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    (
        "pktscope_packets",
        "Packets handled per stage: captured, taken by a decoder, taken by the flow-tracker (records)",
        {"capture": "packets", "decoder-": "packets_in", "flowtracker": "records_in"},
    ),
    ("pktscope_decoded_packets", "Packets decoded to IP and above", {"decoder-": "decoded"}),
    ("pktscope_malformed_packets", "Packets counted as malformed and skipped", {"decoder-": "malformed"}),
    ("pktscope_non_ip_packets", "Packets without an IP layer", {"decoder-": "non_ip"}),
    (
        "pktscope_app_errors",
        "Application-layer parse problems (DNS, TLS, HTTP, QUIC)",
        {"decoder-": "app_errors"},
    ),
    (
        "pktscope_frames_received",
        "Frames received from the previous stage",
        {"decoder-": "frames_in", "flowtracker": "frames_in", "detector": "frames_in"},
    ),
    (
        "pktscope_frames_sent",
        "Frames sent to the next stage",
        {"capture": "frames_out", "decoder-": "frames_out", "flowtracker": "frames_out"},
    ),
    (
        "pktscope_frames_lost",
        "Frames a stage never received (gaps in the sender's sequence numbers)",
        {"decoder-": "frames_lost", "flowtracker": "frames_lost", "detector": "frames_lost"},
    ),
    (
        "pktscope_bad_frames",
        "Frames dropped because they could not be decoded",
        {"decoder-": "bad_frames", "flowtracker": "bad_frames", "detector": "bad_frames"},
    ),
    (
        "pktscope_flow_events",
        "Flow events sent by the flow-tracker and handled by the detector",
        {"flowtracker": "events_out", "detector": "events_in"},
    ),
    ("pktscope_flows", "Flows started", {"flowtracker": "flows_started"}),
    ("pktscope_flows_evicted", "Flows evicted at the flow table cap", {"flowtracker": "evicted"}),
    (
        "pktscope_alerts_suppressed",
        "Alerts not raised again within their cooldown",
        {"detector": "alerts_suppressed"},
    ),
    (
        "pktscope_unattributed_flows",
        "Outbound flows no local process could be tied to",
        {"detector": "unattributed"},
    ),
    (
        "pktscope_attributed_late_flows",
        "Flows tied to their process after their first event",
        {"detector": "attributed_late"},
    ),
    ("pktscope_redis_errors", "Redis errors a service counted (and survived)", {"": "redis_errors"}),
    ("pktscope_service_restarts", "Times a service was restarted within the run", {"": "restarts"}),
    ("pktscope_service_cpu_seconds", "CPU seconds used by a service process", {"": "cpu_seconds"}),
    ("pktscope_notifications_sent", "Notifications delivered", {"notifier": "notifications_sent"}),
    ("pktscope_notified_alerts", "Alerts delivered in notifications", {"notifier": "alerts_delivered"}),
    (
        "pktscope_notification_failures",
        "Failed notification deliveries (each is retried)",
        {"notifier": "delivery_failures"},
    ),
)
DROPS = (  # (capture stats field, reason label)
    ("dropped", "decoder_unavailable"),
    ("pcap_drop", "kernel"),
    ("pcap_ifdrop", "interface"),
)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _stage(service: str) -> str:
    return service.split("-", 1)[0]


class PipelineCollector(Collector):
    def __init__(self, r: redis.Redis, cfg: PipelineConfig) -> None:
        self.r = r
        self.cfg = cfg
        self.keys = ObserveKeys(cfg.redis_prefix)
        self.scrape_errors = 0

    def collect(self) -> Iterator[Any]:
        try:
            stats = pipeline_stats.read_all(self.r, self.keys, self.cfg.run_id or None)
            memory = _memory(self.r)
            learning = self.r.hgetall(self.keys.learning())
            live = self.r.hgetall(self.keys.live_meta())
        except redis.RedisError:
            self.scrape_errors += 1
            stats, memory, learning, live = {}, {}, {}, {}
        up = GaugeMetricFamily("pktscope_redis_up", "1 when the exporter could read Redis on this scrape")
        up.add_metric([], 1.0 if memory else 0.0)
        yield up
        yield from self._per_service(stats)
        yield from self._pipeline(stats, memory, learning, live)

    def _per_service(self, stats: dict[str, dict]) -> Iterator[Any]:
        now = time.time()
        for name, help_text, fields in COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["service", "stage"])
            for service, s in sorted(stats.items()):
                for prefix, field in fields.items():
                    if service.startswith(prefix):  # a counter not written yet is 0
                        family.add_metric([service, _stage(service)], _num(s.get(field, 0)))
                        break
            yield family
        drops = CounterMetricFamily(
            "pktscope_dropped_packets",
            "Packets dropped before decoding: batches for an absent or full decoder (live), libpcap's kernel and interface drops",
            labels=["service", "stage", "reason"],
        )
        for name, cap in sorted(stats.items()):  # "capture", or each of a split capture's
            if not cap or not (name == "capture" or name.startswith("capture-")):
                continue
            for field, reason in DROPS:
                drops.add_metric([name, "capture", reason], _num(cap.get(field, 0)))
            for field, value in sorted(cap.items()):
                if field.startswith("dropped_decoder_"):
                    drops.add_metric(
                        [name, "capture", f"decoder_{field.rsplit('_', 1)[1]}_unavailable"], _num(value)
                    )
        yield drops
        svc_up = GaugeMetricFamily(
            "pktscope_service_up",
            "1 while a service's heartbeat is fresh (finished counts as up)",
            labels=["service", "stage"],
        )
        rss = GaugeMetricFamily(
            "pktscope_service_max_resident_memory_bytes",
            "Peak resident memory of a service process",
            labels=["service", "stage"],
        )
        beat = GaugeMetricFamily(
            "pktscope_service_heartbeat_timestamp_seconds",
            "Last heartbeat of a service (Unix time)",
            labels=["service", "stage"],
        )
        for service, s in sorted(stats.items()):
            labels = [service, _stage(service)]
            fresh = s.get("eos") or now - _num(s.get("heartbeat")) <= STALE_AFTER
            svc_up.add_metric(labels, 1.0 if fresh else 0.0)
            rss.add_metric(labels, _num(s.get("max_rss_kb")) * 1024)
            beat.add_metric(labels, _num(s.get("heartbeat")))
        yield svc_up
        yield rss
        yield beat

    def _pipeline(self, stats: dict[str, dict], memory: dict, learning: dict, live: dict) -> Iterator[Any]:
        # with shards (detector-0, flowtracker-1, ...) the pipeline-wide figures are their sums
        dets = [s for name, s in stats.items() if _stage(name) == "detector"]
        det = {k: v for s in dets for k, v in s.items()}  # for the non-summed fields
        for field in {f for s in dets for f in s if f.startswith(("alerts.", "attribution."))}:
            if field != "attribution.mode":
                det[field] = sum(_num(s.get(field)) for s in dets)
        if dets:
            det["learning"] = max(_num(s.get("learning")) for s in dets)
        active = GaugeMetricFamily("pktscope_flows_active", "Flows in the flow tables now")
        active.add_metric(
            [], sum(_num(s.get("flows_active")) for n, s in stats.items() if _stage(n) == "flowtracker")
        )
        yield active
        conns = GaugeMetricFamily(
            "pktscope_live_connections", "Open connections in the live view (pktscope inspect)"
        )
        conns.add_metric([], _num(live.get("live")))
        yield conns
        alerts = CounterMetricFamily("pktscope_alerts", "Alerts raised, by kind", labels=["kind"])
        for kind in KINDS:
            alerts.add_metric([kind], _num(det.get(f"alerts.{kind}")))
        yield alerts
        attribution = InfoMetricFamily("pktscope_attribution", "How flows are tied to local processes")
        mode = det.get("attribution.mode") or (
            "psutil" if self.cfg.live and self.cfg.detector.attribute_processes else "off"
        )
        attribution.add_metric([], {"mode": str(mode)})
        yield attribution
        misses = CounterMetricFamily(
            "pktscope_attribution_lookups", "Process attribution lookups, by result", labels=["result"]
        )
        for field, value in sorted(det.items()):
            if field.startswith("attribution.") and field != "attribution.mode":
                misses.add_metric([field.split(".", 1)[1]], _num(value))
        yield misses
        mem = GaugeMetricFamily("pktscope_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)")
        mem.add_metric([], _num(memory.get("used_memory")))
        yield mem
        learn = GaugeMetricFamily("pktscope_learning", "1 while the baseline is in its learning window")
        learn.add_metric([], _num(det.get("learning")) if det else (0.0 if learning else 1.0))
        yield learn
        end = GaugeMetricFamily(
            "pktscope_learning_end_timestamp_seconds", "End of the learning window (packet time)"
        )
        end.add_metric([], _num(learning.get("end")))
        yield end
        pending = GaugeMetricFamily(
            "pktscope_notification_pending_alerts", "Alerts read but not yet delivered"
        )
        pending.add_metric([], _num(stats.get("notifier", {}).get("alerts_pending")))
        yield pending
        eve = CounterMetricFamily(
            "pktscope_eve_events", "EVE JSON lines written, by event type", labels=["event_type"]
        )
        for field, value in sorted(stats.get("observer", {}).items()):
            if field.startswith("eve.") and field != "eve.errors":
                eve.add_metric([field[4:]], _num(value))
        yield eve


def _memory(r: redis.Redis) -> dict:
    """INFO memory; on a Redis Cluster ``used_memory`` summed over the masters (one node's alone
    would be a third of the store)."""
    if not is_cluster(r):
        return r.info("memory")
    per_node = r.info("memory", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    if per_node and all(isinstance(v, dict) for v in per_node.values()):
        return {"used_memory": sum(_num(v.get("used_memory")) for v in per_node.values())}
    return per_node
