"""Pipeline configuration: one JSON file in the run directory that every service reads.

``pktscope run`` writes ``<run_dir>/pipeline.json``; each service is started as
``python -m services.<name> --config <run_dir>/pipeline.json [--index I]``, which is also how
systemd units and docker compose run them. Defaults here are the product defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from shared.localnet import DEFAULT_LOCAL_NETS

DAY = 86400.0


def default_run_dir() -> Path:
    """Where a pipeline keeps its sockets, config and private Redis unless told otherwise."""
    env = os.environ.get("PKTSCOPE_RUN_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/pktscope")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "pktscope"
    return Path(f"/tmp/pktscope-{os.geteuid()}")


def default_decoders() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass
class FlowSettings:
    """Flow-tracker timers (packet time, seconds) and bounds."""

    tcp_idle: float = 300.0  # established TCP with no packets
    tcp_handshake_idle: float = 30.0  # SYN seen, never established
    tcp_closed_linger: float = 5.0  # after FIN both ways or RST: keep briefly for stragglers
    udp_idle: float = 60.0
    icmp_idle: float = 30.0
    other_idle: float = 60.0
    update_interval: float = 60.0  # emit an "update" event for a live flow this often
    # Events leave the flow-tracker only once packet time is this far past them, so a packet
    # whose timestamp is behind its predecessors' (merged captures, several interfaces) still
    # reaches the detector in time order; sv-merged.pcap has 187 such packets, up to 5.5 s back.
    reorder_window: float = 10.0
    live_reorder_window: float = 0.25  # live: what alerts wait for it (one interface: in order)
    max_flows: int = 500_000  # hard cap; the least recently seen flow is evicted (and counted)
    # Events waiting out the reorder window, at most: a flood of new flows (100k a second of
    # packet time) would otherwise hold ~450 bytes per flow on top of the table. Beyond it the
    # oldest leave early (counted, ``release_forced``); a straggler behind them then reaches the
    # detector late, where it is counted too (``late_events``).
    max_pending_events: int = 32_768
    flow_log: str = ""  # optional path: one JSON line per ended flow


@dataclass
class DetectorSettings:
    """Signal settings; see docs/architecture.md for their meaning."""

    learning: float = 7 * DAY  # seconds of packet time that only fill the baseline
    cooldown: float = 3600.0  # seconds between two alerts with the same de-duplication key
    volume_interval: float = 60.0
    ewma_alpha: float = 0.3
    z_threshold: float = 4.0
    volume_floor: int = 5 * 1024 * 1024
    min_intervals: int = 8
    geoip_country_db: str = ""
    geoip_asn_db: str = ""
    attribute_processes: bool = True  # psutil attribution of local sockets (live mode on this host)
    # "auto": kernel events (services/procwatch, eBPF) when they load, else psutil; "bpf": kernel
    # events or refuse to start; "psutil": socket-table polling only
    attribution: str = "auto"
    alert_stream_max: int = 100_000  # approximate cap of the Redis alert stream


@dataclass
class PipelineConfig:
    run_dir: str = ""
    run_id: str = ""  # set by `pktscope run`; services stamp it on their stats so old runs are told apart
    state_dir: str = ""  # where the private redis-server keeps the baseline between runs
    # source: exactly one of read_path / interface
    read_path: str = ""
    interface: str = ""
    bpf: str = ""
    snaplen: int = 65535
    promisc: bool = True
    # live: capture processes on one interface, each given a flow-consistent part of the traffic
    # by AF_PACKET fanout (services/capture/sources.py); a replay is read by one process
    captures: int = 1
    decoders: int = field(default_factory=default_decoders)
    flowtrackers: int = 1  # flow-tracker shards: a flow's records go to one, by its flow hash
    detectors: int = 1  # detector shards: a flow's events go to one, by its local address
    batch_size: int = 512  # packets per frame (512 measured fastest on sv-merged: 1.30 s vs 1.66 s at 256, 2.1 s at 1024)
    batch_timeout: float = 0.05  # live: flush a partial batch after this many seconds
    hwm: int = 200  # frames queued per socket before the sender blocks (offline) or drops (live)
    redis_url: str = ""  # empty: the private redis-server in the run directory
    redis_prefix: str = "pktscope"
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster (RedisCluster client)
    alerts_endpoint: str = ""  # empty: ipc://<run_dir>/alerts.ipc
    alerts_curve_dir: str = ""  # CURVE keys (`pktscope keys`) for an alerts endpoint beyond loopback
    insecure_listen: bool = False  # accepted: alerts beyond loopback without CURVE (warned at every start)
    local_nets: list[str] = field(default_factory=lambda: list(DEFAULT_LOCAL_NETS))
    keep_packets: int = 0  # >0: decoders keep this many recent packets per flow (services/decoder/ring.py)
    flow: FlowSettings = field(default_factory=FlowSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    # observation (issue 13): EVE JSON log path, notification URLs, Prometheus listen address
    eve_log: str = ""
    notify: list[str] = field(default_factory=list)
    metrics_listen: str = ""
    observer: bool = False  # an observer service runs (pktscope run: always); the detector feeds it
    # many hosts (issue 15; services/cli/roles.py): "all" runs every stage here; "sensor" runs
    # capture, decoders and flow-trackers and sends flow events to a detector pool over TCP;
    # "pool" runs the detector shards, each bound at pool_listen's port + its index
    role: str = "all"
    sensor_name: str = ""  # sensor: the host name its entities carry (default: this host's name)
    pool_endpoints: list[str] = field(default_factory=list)  # sensor: detector shard k's TCP endpoint
    pool_listen: str = ""  # pool: tcp://ADDR:PORT; shard k binds PORT + k
    link_curve_dir: str = ""  # CURVE keys of the sensor -> pool link (`pktscope keys`)
    link_client: str = ""  # sensor: its key pair's name in <link_curve_dir>/clients/
    sensor_queue: int = 1000  # sensor: frames kept per shard while the pool is unreachable, then dropped
    sensor_silence: float = 10.0  # pool: wall seconds a silent sensor holds back the merge
    # how supervisord starts services (services/launcher): "fork" from a zygote that imported them
    # once, or "exec" a fresh interpreter each; systemd units always exec (docs/architecture.md)
    launcher: str = "fork"

    # --- derived endpoints ---------------------------------------------------------------
    @property
    def live(self) -> bool:
        return bool(self.interface)

    def _ipc(self, name: str) -> str:
        return f"ipc://{Path(self.run_dir) / name}"

    def decoder_endpoint(self, index: int) -> str:
        return self._ipc(f"decoder-{index}.ipc")

    def capture_name(self, index: int = 0) -> str:
        """One capture keeps the plain name "capture"; split ones are "capture-0", ... (as shards)."""
        return "capture" if self.captures <= 1 else f"capture-{index}"

    def capture_names(self) -> list[str]:
        return [self.capture_name(k) for k in range(max(1, self.captures))]

    # A stage with one instance keeps its plain name ("flowtracker", "detector"); shards are
    # numbered ("flowtracker-0", ...), as decoders are. The name is the stats hash, the frame
    # sender and the supervisord process name.
    def tracker_name(self, index: int = 0) -> str:
        return "flowtracker" if self.flowtrackers <= 1 else f"flowtracker-{index}"

    def detector_name(self, index: int = 0) -> str:
        return "detector" if self.detectors <= 1 else f"detector-{index}"

    def tracker_names(self) -> list[str]:
        return [self.tracker_name(j) for j in range(max(1, self.flowtrackers))]

    def detector_names(self) -> list[str]:
        return [self.detector_name(k) for k in range(max(1, self.detectors))]

    @property
    def packets_hwm(self) -> int:
        """High-water mark of the capture -> decoder link (each side), in frames.

        Live, the full ``hwm``: the burst a decoder may fall behind before capture drops. A
        replay blocks instead of dropping, so deep queues only hold memory (frames of 512 packets
        waiting in capture and in the decoders): a sixteenth of it (12 frames, 6k packets). Since
        capture deals from a mapped file it runs ahead of the decoders and fills its queues: at a
        quarter (50 frames) its peak RSS on the 5x capture was 56 MB against 51 MB before, at 12
        frames 47 MB, with the same wall time (docs/benchmarks.md, "mapped replay").
        """
        return self.hwm if self.live else max(8, self.hwm // 16)

    @property
    def records_hwm(self) -> int:
        """High-water mark of the decoder -> flow-tracker link (each side), in frames.

        A quarter of ``hwm``: the flow-tracker is the slower stage, so on a replay this link's
        queues fill to the mark, and each frame of 512 records held there costs the decoder and
        the flow-tracker memory. At 200 frames the flow-tracker peaked at 132-142 MB on the 5x
        capture, at 50 at 78-86 MB, about 4% slower end to end (inside the run-to-run spread; docs/benchmarks.md).
        Live drops happen before the decoders, on capture's link, which keeps ``hwm``.
        """
        return max(8, self.hwm // 4)

    def tracker_endpoint_of(self, index: int) -> str:
        return self._ipc(f"{self.tracker_name(index)}.ipc")

    def detector_endpoint_of(self, index: int) -> str:
        """Detector shard ``index``'s flow-event endpoint: ipc here, the pool's TCP elsewhere."""
        if self.role == "sensor" and self.pool_endpoints:
            return self.pool_endpoints[index]
        if self.role == "pool" and self.pool_listen:
            host, _, port = self.pool_listen.rpartition(":")
            return f"{host}:{int(port) + index}"
        return self._ipc(f"{self.detector_name(index)}.ipc")

    def local_detector_names(self) -> list[str]:
        """Detectors that run (and write stats) beside this process: none on a sensor."""
        return [] if self.role == "sensor" else self.detector_names()

    def sender_name(self, name: str) -> str:
        """A stage's name in frames to the pool: ``<sensor>/<name>`` on a sensor, unique across hosts."""
        return f"{self.sensor_name}/{name}" if self.role == "sensor" else name

    @property
    def tracker_endpoint(self) -> str:
        return self.tracker_endpoint_of(0)

    @property
    def detector_endpoint(self) -> str:
        return self.detector_endpoint_of(0)

    def alerts_pub_endpoint_of(self, index: int) -> str:
        """Detector ``index``'s PUB socket: the one endpoint when there is one detector; with
        shards ``alerts-<k>.ipc``, or the given TCP port + k (subscribers connect to all)."""
        if self.detectors <= 1:
            return self.alerts_pub_endpoint
        if self.alerts_endpoint.startswith("tcp://"):
            host, _, port = self.alerts_endpoint.rpartition(":")
            return f"{host}:{int(port) + index}"
        return self._ipc(f"alerts-{index}.ipc")

    def alerts_pub_endpoints(self) -> list[str]:
        return [self.alerts_pub_endpoint_of(k) for k in range(max(1, self.detectors))]

    @property
    def procwatch_endpoint(self) -> str:
        return self._ipc("procwatch.ipc")

    @property
    def procwatch_enabled(self) -> bool:
        """procwatch runs on live captures that attribute processes, unless psutil is asked for."""
        return self.live and self.detector.attribute_processes and self.detector.attribution != "psutil"

    @property
    def alerts_pub_endpoint(self) -> str:
        return self.alerts_endpoint or self._ipc("alerts.ipc")

    @property
    def private_redis_socket(self) -> Path:
        return Path(self.run_dir) / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"unix://{self.private_redis_socket}"

    # --- persistence ---------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path | None = None) -> Path:
        path = path or Path(self.run_dir) / "pipeline.json"
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # owner-only: it may hold a Redis password
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict) -> PipelineConfig:
        data = dict(data)
        flow = FlowSettings(**data.pop("flow", {}))
        det = DetectorSettings(**data.pop("detector", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(flow=flow, detector=det, **data)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
