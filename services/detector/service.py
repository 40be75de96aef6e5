"""The detector process: PULL flow events, run the engine, PUB alerts, heartbeat stats."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from itertools import groupby
from operator import itemgetter
from typing import Any

import redis
import zmq

from services.detector import alerts, flows_skim, sensor_entity, sensor_stats
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from services.detector.keys import DetectorKeys
from services.detector.merge import EventMerge
from services.detector.observers import Observers
from services.detector.pool_link import bind_pool_pull
from services.detector.pool_merge import PoolMerge
from shared import frames, packet_ring
from shared import stats as stats_module
from shared.config import PipelineConfig
from shared.continuity import lost_ends
from shared.curve import bind_alerts_pub
from shared.redis_conn import connect_until_ready
from shared.service import StopFlag, loop_starting
from shared.sockets import bind_pull
from shared.stats import ServiceStats

log = logging.getLogger(__name__)

POLL_MS = 200
OBSERVER_READY_WAIT = 15.0  # offline: seconds the detector waits for the observer at start
MAINTENANCE_EVERY = 10.0  # wall seconds between engine.maintenance() calls
# Counters a detector restarted within one run (kill -9, crash, supervisorctl restart) takes over
# from its predecessor's stats hash, so the run's figures cover every incarnation.
RUN_COUNTERS = (
    "late_events",
    "volume_behind",
    "frames_in",
    "events_in",
    "bad_events",
    "bad_frames",
    "alerts",
    "alerts_suppressed",
    "unattributed",
    "batches_dropped",
)


class DetectorService:
    def __init__(self, cfg: PipelineConfig, stop: StopFlag, index: int = 0) -> None:
        self.cfg = cfg
        self.stop = stop
        self.index = index
        self.name = cfg.detector_name(index)
        self.keys = DetectorKeys(cfg.redis_prefix)
        self.ctx = zmq.Context()
        # a detector pool: sensors connect over TCP (CURVE); their events are merged by packet time
        self.pool = cfg.role == "pool"
        self.pull_auth = None
        if self.pool:
            self.pull, self.pull_auth = bind_pool_pull(
                self.ctx, cfg.detector_endpoint_of(index), cfg.hwm, cfg.link_curve_dir
            )
        else:
            self.pull = bind_pull(self.ctx, cfg.detector_endpoint_of(index), cfg.hwm)
        # A context holds one ZAP handler (inproc://zeromq.zap.01): a CURVE pool link and CURVE alerts
        # (the multihost compose example's pool) each need their own context.
        self.pub_ctx = zmq.Context() if self.pull_auth is not None and cfg.alerts_curve_dir else self.ctx
        self.pub, self.auth = bind_alerts_pub(
            self.pub_ctx, cfg.alerts_pub_endpoint_of(index), cfg.hwm, cfg.alerts_curve_dir, cfg.insecure_listen
        )
        # several flow-tracker shards: their events are merged into one packet-time order
        self.merge = EventMerge(cfg.flowtrackers) if cfg.flowtrackers > 1 else None
        self.pool_merge = PoolMerge(cfg.sensor_silence) if self.pool else None
        # one flow-tracker, no sensors: a FLOWS frame is read in place (flows_skim), its inbound
        # rows' times taken without unpacking them; merges need every row as it is
        self.skim_flows = self.merge is None and self.pool_merge is None
        self._peer = ""  # the sensor (key name) of the frame being handled, on a CURVE pool
        self._impostors: set[tuple[str, str]] = set()
        self._eos_bodies: dict[str, Any] = {}
        self.r = None
        self.stats: ServiceStats | None = None
        self.engine: DetectorEngine | None = None
        self.gaps = frames.SequenceGaps()
        self._engine_errors_seen = 0
        self.observers: Observers | None = None
        self._frame_buf: bytes | None = None

    def start(self) -> bool:
        self.r = connect_until_ready(self.cfg.effective_redis_url, self.stop, self.cfg.redis_cluster, self.name)
        if self.r is None:
            return False
        self.stats = ServiceStats(self.name, self.r, self.keys)
        seq_key = self.keys.receiver_seq(self.name)
        last_seqs = self._until_answered(lambda: self.r.hgetall(seq_key))
        previous = self._until_answered(lambda: self.r.hgetall(self.keys.stats(self.name)))
        if last_seqs is None or previous is None:
            return False
        self.gaps = frames.SequenceGaps({k: int(v) for k, v in last_seqs.items()})
        self._until_answered(lambda: self._continue_run(previous) or True)
        self.engine = DetectorEngine(
            self.r,
            self.cfg,
            self.keys,
            Enrichers.load(self.cfg),
            counters=self.stats.c,
            stop=lambda: bool(self.stop),
        )
        self.engine.outages = self.stats.outages  # its retries and slow answers count as outages
        self.stats.sources.append(self._enrichment_counters)
        if self.cfg.observer:
            self.observers = Observers(self.cfg, self.engine, self.stats.c, self.ctx)
            if not self.cfg.live:  # a replay's first frames wait for the observer to be there
                stats_module.wait_until_ready(self.r, self.keys, ["observer"], OBSERVER_READY_WAIT)
        for name in (
            "frames_in",
            "events_in",
            "alerts",
            "alerts_suppressed",
            "unattributed",
            "bad_frames",
            "late_events",
            "volume_behind",
        ):
            self.stats.c[name] += 0
        self._gauges()
        self.stats.flush()
        return True

    def _until_answered(self, fn):
        """``fn()`` retried with backoff while Redis is out (paused, restarting); None if stopped."""
        delay = 0.1
        while not self.stop:
            try:
                return fn()
            except redis.RedisError as exc:
                log.warning("Redis not answering (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _continue_run(self, previous: dict[str, str]) -> None:
        """Take over the counters of a predecessor killed or stopped in this same run.

        A hash left by another run (or by a detector that saw its end of stream) is replaced,
        so that its ``eos`` cannot end the new run. Counts the killed process had not flushed
        yet (at most ``ServiceStats.interval``) are gone with it; the alert stream is exact.
        """
        assert self.r is not None and self.stats is not None
        same_run = bool(stats_module.RUN_ID) and previous.get("run_id") == stats_module.RUN_ID
        if not same_run or previous.get("eos"):
            self.r.delete(self.keys.stats(self.name))
            return
        for name in RUN_COUNTERS:
            self.stats.c[name] = _count(previous.get(name))
        self.gaps.lost = _count(previous.get("frames_lost"))
        self.stats.redis_errors = _count(previous.get("redis_errors"))
        self.stats.c["restarts"] = _count(previous.get("restarts")) + 1
        log.warning(
            "detector: restarted in run %s (pid %s before); continuing its counters",
            stats_module.RUN_ID,
            previous.get("pid", "?"),
        )

    def _enrichment_counters(self) -> dict[str, int]:
        """GeoIP, attribution and identity counters (lookups, hits, scans, errors) as geoip.* etc."""
        assert self.engine is not None
        enr = self.engine.enr
        out: dict[str, int] = {}
        for prefix, part in (("geoip", enr.geoip), ("attribution", enr.attributor), ("identity", enr.identity)):
            counters = getattr(part, "counters", None)
            if counters:
                out.update({f"{prefix}.{k}": v for k, v in counters.items()})
        return out

    def _gauges(self) -> None:
        assert self.stats is not None and self.engine is not None
        self.stats.c["learning"] = int(self.engine.learning)
        if self.pool_merge is not None:
            self.stats.c["sensor_inputs"] = self.pool_merge.inputs
            self.stats.c["sensor_inputs_stalled"] = self.pool_merge.stalled
            self.stats.c["sensor_inputs_ended"] = self.pool_merge.ended
            self.stats.c["merge_forced"] = self.pool_merge.forced
        if self.pull_auth is not None:
            self.stats.c["auth_refused"] = self.pull_auth.refused
        self.stats.c["frames_lost"] = self.gaps.lost
        # the engine's Redis errors add to those of the stats writer itself
        self.stats.redis_errors += self.engine.redis_errors - self._engine_errors_seen
        self._engine_errors_seen = self.engine.redis_errors

    def publish(self, raised: list[dict]) -> None:
        if self.cfg.keep_packets > 0 and self.r is not None:
            self._request_packets(raised)
        if self.observers is not None:
            self.observers.frame(self._frame_buf, raised)
            self._frame_buf = None
        for alert in raised:
            # PUB does not block; the Redis stream is the durable copy
            with contextlib.suppress(zmq.Again):
                self.pub.send_multipart(alerts.pub_message(alert), flags=zmq.NOBLOCK)

    def _request_packets(self, raised: list[dict]) -> None:
        """Ask the decoders to save each alert's flow packets (services/decoder/ring.py)."""
        for alert in raised:
            flow = (alert.get("detail") or {}).get("flow")
            if isinstance(flow, dict) and alert.get("id"):
                try:
                    packet_ring.request(self.r, self.cfg.redis_prefix, alert["id"], flow)
                except (redis.RedisError, KeyError):
                    self.stats.c["ring_request_errors"] += 1

    def run(self) -> int:
        if not self.start():
            return 0
        assert self.engine is not None and self.stats is not None
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        next_maintenance = time.monotonic() + MAINTENANCE_EVERY
        eos_body = None
        loop_starting(self.stats)
        idle_since = time.monotonic()
        while not self.stop:
            if poller.poll(POLL_MS):
                idle_since = time.monotonic()
                eos_body = self.handle(self._recv())
                if eos_body is not None:
                    break
            elif self.pool_merge is not None:
                self._release_pool(None)  # a silent sensor holds the others back only so long
            elif self._tracker_ended_while_away(idle_since):
                eos_body = {"origin": "flowtracker", "eos_lost": True}
                if self.merge is not None:  # the other shards' bodies, those that did arrive
                    eos_body = {"origin": "flowtracker", "eos_lost": True, "shards": self._eos_bodies}
                break
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + MAINTENANCE_EVERY
                self.engine.maintenance()
            self._gauges()
            self.stats.maybe_flush()
        self.publish(self.engine.finish())
        if self.observers is not None:
            if eos_body is not None:
                self.observers.end()
            self.observers.close()
        self._gauges()
        if eos_body is not None:
            self.stats.flush_final(eos=1, eos_body=json.dumps(eos_body, default=str))
        else:
            self.stats.flush()
        self.pull.close()
        self.pub.close(linger=500)
        if self.auth is not None:
            self.auth.stop()
        if self.pull_auth is not None:
            self.pull_auth.stop()
        if self.pub_ctx is not self.ctx:
            self.pub_ctx.term()
        self.ctx.term()
        return 0

    def _recv(self) -> bytes:
        """A frame; on a CURVE pool, with the sensor its key belongs to (ZAP user id) noted."""
        if self.pull_auth is None:
            return self.pull.recv()
        msg = self.pull.recv(copy=False)
        try:
            self._peer = msg.get("User-Id") or ""
        except zmq.ZMQError:
            self._peer = ""
        return msg.bytes

    def _tracker_ended_while_away(self, idle_since: float) -> bool:
        """Idle, and the flow-tracker says it ended: its end of stream was lost with our dead
        predecessor, or with a flow-tracker killed between its final stats and its end-of-stream
        frame (supervisord restarts it, but the successor starts after the end); waiting for it
        would hang the run."""
        assert self.stats is not None
        waiting = [n for n in self.cfg.tracker_names() if n not in self._eos_bodies]
        restarted = bool(self.stats.c["restarts"])
        if not waiting or len(lost_ends(self.stats, waiting, idle_since, restarted)) < len(waiting):
            return False
        log.warning("detector: the flow-tracker ended but its end of stream never came; counted as lost")
        self.stats.c["eos_lost"] += 1
        return True

    def _report_gap(self, sender: str, seq: int, missing: int) -> None:
        """Log and publish a loss at once: it is rare, and the next flush may never come."""
        assert self.stats is not None
        log.warning(
            "detector: frames %d..%d from %s never arrived (%d lost)", seq - missing, seq - 1, sender, missing
        )
        self.stats.c["frames_lost"] = self.gaps.lost
        self.stats.flush()

    def handle(self, buf: bytes) -> object | None:
        """One frame; returns the EOS body (not None) when the stream ended."""
        assert self.engine is not None and self.stats is not None
        skim = flows_skim.scan(buf, self.engine.watermark) if self.skim_flows else None
        if skim is not None:
            frame = frames.Frame(frames.FrameType.FLOWS, frames.FRAME_VERSION, skim[0], skim[1], None)
        else:
            try:
                frame = frames.decode(buf)
            except frames.FrameError:
                self.stats.c["bad_frames"] += 1
                return None
        if self.pull_auth is not None and frame.sender.partition("/")[0] != self._peer:
            self._impostor(frame.sender)
            return None
        pool_stats = frame.type == frames.FrameType.STATS and self.pool_merge is not None
        if not pool_stats and frame.type not in (
            frames.FrameType.FLOWS,
            frames.FrameType.TICK,
            frames.FrameType.EOS,
        ):
            self.stats.c["bad_frames"] += 1
            return None
        self.stats.c["frames_in"] += 1
        missing = self.gaps.see(frame.sender, frame.seq)
        if missing:
            self._report_gap(frame.sender, frame.seq, missing)
        if pool_stats:  # a sensor's instances' stats: numbered with its events
            return self._sensor_stats(frame)
        seq_key = self.keys.receiver_seq(self.name)

        def save_seq(batch) -> None:
            batch.command("hset", seq_key, frame.sender, frame.seq)

        if self.pool_merge is not None:
            return self._handle_pool(frame, save_seq)
        if self.merge is not None:
            return self._handle_merged(frame, save_seq)

        if frame.type == frames.FrameType.FLOWS:
            self._frame_buf = buf  # forwarded as received to the observer (live view, EVE)
            if skim is not None:  # read in place, with the engine's watermark of now
                self.publish(self.engine.process((), extra=save_seq, scanned=skim[2]))
                return None
            body = frame.body if isinstance(frame.body, (list, tuple)) else None
            if body is None:
                self._frame_buf = None
                self.stats.c["bad_frames"] += 1
                return None
            self.publish(self.engine.process(body, extra=save_seq))
        elif frame.type == frames.FrameType.TICK:
            ts = frame.body.get("ts") if isinstance(frame.body, dict) else None
            if isinstance(ts, (int, float)):
                self.publish(self.engine.tick(float(ts), extra=save_seq))
            else:
                self.stats.c["bad_frames"] += 1
        else:
            self.engine.tick(self.engine.watermark, extra=save_seq)
            return frame.body if frame.body is not None else {}
        return None

    def _handle_merged(self, frame: frames.Frame, save_seq: Any) -> object | None:
        """With flow-tracker shards: buffer, then handle what every shard has passed, in order."""
        assert self.engine is not None and self.stats is not None and self.merge is not None
        merge = self.merge
        if frame.type == frames.FrameType.FLOWS:
            try:
                merge.add(frame.sender, frame.body if isinstance(frame.body, (list, tuple)) else None)
            except (ValueError, TypeError):
                self.stats.c["bad_frames"] += 1
                return None
        elif frame.type == frames.FrameType.TICK:
            ts = frame.body.get("ts") if isinstance(frame.body, dict) else None
            if not isinstance(ts, (int, float)):
                self.stats.c["bad_frames"] += 1
                return None
            merge.tick(frame.sender, float(ts))
        else:
            merge.finish(frame.sender)
            self._eos_bodies[frame.sender] = frame.body
        rows = merge.release()
        if rows:
            if self.observers is not None:  # the observer reads the merged events as one frame
                self._frame_buf = frames.encode(frames.FrameType.FLOWS, self.name, 0, rows)
            self.publish(self.engine.process(rows, extra=save_seq))
        bound = merge.bound()
        if merge.all_finished:
            self.engine.tick(self.engine.watermark, extra=save_seq)
            return {"origin": self.name, "flowtrackers": [self._eos_bodies[s] for s in sorted(self._eos_bodies)]}
        if bound > self.engine.watermark and bound != float("inf"):
            self.publish(self.engine.tick(bound, extra=save_seq))
        elif not rows:
            self.engine.tick(self.engine.watermark, extra=save_seq)  # records the sequence number
        return None

    # --- a detector pool (role "pool"): every sensor's flow-trackers -----------------------------
    def _impostor(self, sender: str) -> None:
        """A frame whose sensor name is not its key's: dropped, counted, logged once per pair."""
        assert self.stats is not None
        self.stats.c["sensor_name_refused"] += 1
        pair = (self._peer, sender)
        if pair not in self._impostors and len(self._impostors) < 1000:
            self._impostors.add(pair)
            log.warning(
                "detector: dropped frames from %r sent with the key of sensor %r: a sensor's --sensor-name "
                "must be its key's name in authorized/",
                sender,
                self._peer,
            )

    def _sensor_stats(self, frame: frames.Frame) -> None:
        """A sensor's instances' stats, kept for `pktscope status` (sensor_stats.py)."""
        assert self.stats is not None and self.r is not None
        sensor = frame.sender.partition("/")[0]
        try:
            stored = sensor_stats.save(self.r, self.cfg.redis_prefix, sensor, frame.body)
        except redis.RedisError:
            self.stats.c["sensor_stats_errors"] += 1
            return None
        self.stats.c["sensor_stats" if stored else "bad_frames"] += 1
        return None

    def _handle_pool(self, frame: frames.Frame, save_seq: Any) -> None:
        """Buffer a sensor's frame; handle what every live sensor has passed. A pool never ends
        on a sensor's end of stream: that sensor just leaves the merge."""
        assert self.stats is not None and self.pool_merge is not None
        sensor, _, stage = frame.sender.partition("/")
        if not stage or not sensor_entity.valid_sensor_name(sensor):
            self.stats.c["bad_frames"] += 1
            return None
        merge = self.pool_merge
        if frame.type == frames.FrameType.FLOWS:
            try:
                merge.add(frame.sender, frame.body if isinstance(frame.body, (list, tuple)) else None)
            except (ValueError, TypeError):
                self.stats.c["bad_frames"] += 1
                return None
        elif frame.type == frames.FrameType.TICK:
            ts = frame.body.get("ts") if isinstance(frame.body, dict) else None
            if not isinstance(ts, (int, float)):
                self.stats.c["bad_frames"] += 1
                return None
            merge.tick(frame.sender, float(ts))
        else:
            merge.finish(frame.sender)
            log.info("detector: %s ended its stream", frame.sender)
        self._release_pool(save_seq)
        return None

    def _release_pool(self, save_seq: Any) -> None:
        """Handle the merged events, one run of one sensor's events at a time (its entities)."""
        assert self.engine is not None and self.pool_merge is not None
        engine = self.engine
        pairs = self.pool_merge.release_pairs()
        for sender, run in groupby(pairs, key=itemgetter(1)):
            rows = [row for row, _ in run]
            engine.sensor = sender.partition("/")[0]
            if self.observers is not None:
                self._frame_buf = frames.encode(frames.FrameType.FLOWS, self.name, 0, rows)
            self.publish(engine.process(rows, extra=save_seq))
        engine.sensor = ""
        bound = self.pool_merge.bound()
        if bound > engine.watermark and bound != float("inf"):
            self.publish(engine.tick(bound, extra=save_seq))
        elif not pairs and save_seq is not None:
            engine.tick(engine.watermark, extra=save_seq)  # records the sequence number


def _count(value: str | None) -> int:
    """A counter from a stats hash; anything unreadable counts as 0."""
    try:
        return int(float(value or 0))
    except ValueError:
        return 0
