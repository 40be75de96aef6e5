"""The flow-tracker service: RECORDS/TICK/EOS frames from the decoders in, FLOWS frames out.

One process per shard (``--flowtrackers M``; a flow's records all reach one shard, see
shared/routing.py). It binds a PULL that every decoder pushes to and pushes flow events to the
detector shard of each flow's local address. The decoders' records are put back in capture order
(merge.py) before the flow table sees them, and timers run on packet time only (table.py), so
a replay gives the same flow events, in the same order, however many decoders there are.
The detector gets the events in packet-time order, and a TICK whenever packet time moved a
second without events, so its volume intervals close on time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import zmq

from services.flowtracker import packed_records
from services.flowtracker import table as flow_table
from services.flowtracker.capture_merge import CaptureTimeMerge
from services.flowtracker.flowlog import FlowLog
from services.flowtracker.flowlog_process import flow_process_lookup
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.merge import CaptureOrderMerge
from services.flowtracker.stats_relay import StatsRelay
from services.flowtracker.table import FlowTable
from services.flowtracker.uplink import Uplink
from shared import frames
from shared.config import PipelineConfig
from shared.continuity import Continuity, lost_ends, progress_path
from shared.frames import FrameError, FrameType, SequenceGaps
from shared.localnet import LocalNets, interface_addresses
from shared.packed import records_of
from shared.redis_conn import connect_made
from shared.redis_keys import Keys
from shared.routing import NAMES_ONLY, detector_of
from shared.service import loop_starting
from shared.sockets import END_OF_STREAM_LINGER_MS, bind_pull, connect_push
from shared.stats import ServiceStats, wait_until_ended

log = logging.getLogger("pktscope.flowtracker")

POLL_MS = 100  # how often an idle or blocked tracker looks at the stop flag and heartbeat
# Events per FLOWS frame at most. Most of a short capture's events come at once at its end (its
# flows end together, or a reorder window's worth is released when a decoder ends); in frames of
# this size the detector and the observer work on the first while the next is packed.
EVENT_CHUNK = 2048
# Decoder frames handled at most before the table's timers run and events are sent, while more
# wait (the tracker is behind): the same events, in fewer frames (_handle_waiting).
COALESCE_FRAMES = 8
SENSOR_DRAIN = 10.0  # seconds a sensor's finished replay waits for the pool to take what it queued
SHUTDOWN_SEND_GRACE = 3.0  # seconds a stopping tracker waits for the detector to take events
DETECTOR_TICK_EVERY = 1.0  # packet-time seconds between two TICKs to the detector
COUNTERS = (
    "frames_in",
    "frames_out",
    "records_in",
    "events_out",
    "flows_started",
    "flows_ended",
    "flows_active",
    "evicted",
    "bad_frames",
    "bad_records",
    "frames_lost",
    "flows_lost",
    "eos_lost",
    "merge_forced",
    "merge_resets",
    "release_forced",
)
# counters the flow table keeps itself: a restarted tracker adds its predecessor's to its own
TABLE_COUNTERS = ("flows_started", "flows_ended", "evicted", "bad_records", "release_forced")


def connect_redis(url: str, cluster: bool = False, stop: Any = False) -> redis.Redis | None:
    """A Redis client for stats; an outage only counts errors in ServiceStats, never stops us.
    None only when ``stop`` came first (a Cluster client cannot be made before a node answers:
    shared/redis_conn.connect_made)."""
    return connect_made(url, stop, cluster, "flowtracker", socket_connect_timeout=0.5, socket_timeout=2)


def local_nets(cfg: PipelineConfig) -> LocalNets:
    """Configured local networks, plus the capture interface's own addresses when live."""
    nets = LocalNets(cfg.local_nets)
    if cfg.live:
        for net in interface_addresses(cfg.interface):
            nets.add(net)
    return nets


class FlowTrackerService:
    def __init__(self, cfg: PipelineConfig, r: redis.Redis | None, index: int = 0) -> None:
        self.cfg = cfg
        self.index = index
        self.name = cfg.tracker_name(index)
        self.stats = ServiceStats(self.name, r, Keys(cfg.redis_prefix))
        self.stats.info["hot_path"] = "compiled" if flow_table.COMPILED else "pure"  # shared/compiled.py
        c = self.stats.c
        for key in COUNTERS:
            c[key] = 0
        if cfg.live:
            cfg.flow.reorder_window = min(cfg.flow.reorder_window, cfg.flow.live_reorder_window)
        shards = max(1, cfg.flowtrackers)
        self.table = FlowTable(
            cfg.flow, LocalMatcher(local_nets(cfg).networks), fid_start=index + 1, fid_step=shards
        )
        # several live captures number their packets apart: merged by packet time (capture_merge.py)
        self.merge: CaptureOrderMerge | CaptureTimeMerge = (
            CaptureTimeMerge(cfg.decoders, cfg.captures) if cfg.captures > 1 else CaptureOrderMerge(cfg.decoders)
        )
        # packed records go through the merge and into the table as references, read in place
        # (packed_records.py), when its twin runs and no other tracker's DNS answers are looked
        # into first (_learn_names_only reads record tuples)
        self.by_reference = packed_records.COMPILED and cfg.flowtrackers <= 1
        self.stats.info["records_path"] = "references" if self.by_reference else "tuples"
        self.detectors = max(1, cfg.detectors)
        self.tick_sent = [float("-inf")] * self.detectors  # packet time of the last TICK to each
        self.gaps = SequenceGaps()
        self.eos_bodies: dict[str, Any] = {}
        self.flow_log = FlowLog(cfg.flow.flow_log, flow_process_lookup(cfg)) if cfg.flow.flow_log else None
        self.seqs = [0] * self.detectors
        # restarted within the run: carry on counters and numbering; the flows the dead tracker
        # held are gone (they never end properly) and are counted as lost
        self.continuity = Continuity(self.stats, self.gaps, COUNTERS, progress_path(cfg.run_dir, self.name))
        self.continuity.resume()
        prev = self.continuity.previous
        self.base = {name: c[name] for name in TABLE_COUNTERS}
        if self.continuity.restarted:
            self.seqs = self.continuity.next_seqs(self.detectors)
            c["flows_lost"] += int(float(prev.get("flows_active", 0) or 0))
        self.ended = False  # the end of stream was passed on (not a stop)
        self.ctx = zmq.Context.instance()
        self.pull = bind_pull(self.ctx, cfg.tracker_endpoint_of(index), cfg.records_hwm)
        # a sensor sends to the pool over TCP and never blocks on it (uplink.py); else ipc PUSH
        self.uplink: Uplink | None = None
        self.relay: StatsRelay | None = None
        self.sender = cfg.sender_name(self.name)
        if cfg.role == "sensor":
            endpoints = [cfg.detector_endpoint_of(k) for k in range(self.detectors)]
            self.uplink = Uplink(
                self.ctx, endpoints, cfg.hwm, cfg.link_curve_dir, cfg.link_client, cfg.sensor_queue, c
            )
            self.pushes = []
            if index == 0:
                self.relay = StatsRelay(cfg, r, Keys(cfg.redis_prefix))
        else:
            self.pushes = [
                connect_push(self.ctx, cfg.detector_endpoint_of(k), cfg.hwm) for k in range(self.detectors)
            ]
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)

    # --- main loop -----------------------------------------------------------------------------
    def run(self, stop: Any) -> int:
        """Serve until every decoder's EOS or the stop flag; return the exit status (0 both ways)."""
        log.info(
            "flowtracker: %s -> %s, %d decoder(s)",
            self.cfg.tracker_endpoint_of(self.index),
            ", ".join(self.cfg.detector_endpoint_of(k) for k in range(self.detectors)),
            self.cfg.decoders,
        )
        pull = self.pull
        loop_starting(self.stats)
        idle_since = time.monotonic()
        try:
            while not stop:
                try:
                    buf = pull.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    self._publish_stats()
                    if self.uplink is not None:
                        self.uplink.pump()
                        self._relay_stats(stop)
                    self.poller.poll(POLL_MS)
                    if not self._decoders_ended_while_away(idle_since):
                        continue
                    buf = None
                else:
                    idle_since = time.monotonic()
                    self.continuity.handling()
                if buf is None or self._handle_waiting(buf, stop):
                    self._finish("eos", stop)
                    self.ended = not stop
                    log.info(
                        "flowtracker: end of stream: %d flows from %d records",
                        self.table.flows_started,
                        self.table.records,
                    )
                    return 0
                self._update_counters()
                self.continuity.progress(self.seqs)
                self.stats.maybe_flush()
                if self.relay is not None:
                    self._relay_stats(stop)
            log.info("flowtracker: stopping on signal")
            self._finish("shutdown", stop)
            return 0
        finally:
            self.close(stop)

    def _decoders_ended_while_away(self, idle_since: float) -> bool:
        """Idle: decoders whose stats say they ended sent their end of stream to our dead
        predecessor, or were killed between their final stats and their end-of-stream frame.
        Count them as finished (``eos_lost``); True once every decoder is."""
        waiting = [f"decoder-{i}" for i in range(self.cfg.decoders) if f"decoder-{i}" not in self.merge.finished]
        for name in lost_ends(self.stats, waiting, idle_since, self.continuity.restarted):
            log.warning("flowtracker: %s ended but its end of stream never came; counted as lost", name)
            self.stats.c["eos_lost"] += 1
            self.eos_bodies[name] = {"origin": name, "eos_lost": True}
            self.merge.finish(name)
        return self.merge.all_finished

    def _handle_waiting(self, buf: bytes, stop: Any) -> bool:
        """``buf`` and, while more frames wait (this tracker is behind), up to COALESCE_FRAMES in
        all, then one pass of the table's timers and one send: fewer, larger FLOWS frames when
        behind (each frame costs the detector and Redis ~0.17 ms whatever its size), the same
        frames as before when not. True once every decoder has ended its stream."""
        done = self.handle(buf, stop, feed=False)
        taken = 1
        while not done and taken < COALESCE_FRAMES:
            try:
                buf = self.pull.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            done = self.handle(buf, stop, feed=False)
            taken += 1
        self._feed(stop)
        return done

    def handle(self, buf: bytes, stop: Any = False, feed: bool = True) -> bool:
        """Process one received frame; return True once every decoder has ended its stream.
        ``feed=False``: the frame's records wait in the merge for the caller's ``_feed``."""
        c = self.stats.c
        try:
            frame = frames.decode(buf)
        except FrameError as exc:
            c["bad_frames"] += 1
            log.debug("dropped a bad frame: %s", exc)
            return False
        c["frames_in"] += 1
        c["frames_lost"] += self.gaps.see(frame.sender, frame.seq)
        ftype, sender, body = frame.type, frame.sender, frame.body
        merge = self.merge
        if ftype == FrameType.RECORDS:
            try:
                if self.by_reference and type(body) is bytes:
                    merge.add(sender, packed_records.refs_of(body))
                else:
                    merge.add(sender, records_of(body))  # packed by the decoder, or a list
            except ValueError:
                c["bad_frames"] += 1
                return False
        elif ftype == FrameType.TICK:
            ts = body.get("ts") if isinstance(body, dict) else None
            num = body.get("num") if isinstance(body, dict) else None
            if not isinstance(ts, float | int) or not isinstance(num, int) or ts != ts:
                c["bad_frames"] += 1
                return False
            merge.tick(sender, num, float(ts))
        elif ftype == FrameType.EOS:
            self.eos_bodies[sender] = body
            merge.finish(sender)
            # the capture's last packet time, so that every shard ends its flows ("eos") alike
            upstream = body.get("upstream") if isinstance(body, dict) else None
            last = upstream.get("last_ts") if isinstance(upstream, dict) else None
            if isinstance(last, float | int) and last == last and last > merge.highest:
                merge.highest = float(last)
        else:
            c["bad_frames"] += 1
            return False
        if feed:
            self._feed(stop)
        return merge.all_finished

    def _feed(self, stop: Any) -> None:
        """Hand the table what every decoder has passed, fire its timers, send what is ready."""
        merge = self.merge
        records = merge.release()
        table = self.table
        if records and self.cfg.flowtrackers > 1:
            records = self._learn_names_only(records)
        if records:
            before = table.records
            self._add(records)
            self.stats.c["records_in"] += table.records - before
        if merge.all_finished:
            return  # _finish ends every flow and sends the rest
        table.advance(merge.watermark)
        rows = table.take_rows()
        sent = self._send_events(rows, stop)
        horizon = table.horizon  # what a detector may take as passed: events before it are out
        # A detector that got no events lately hears the horizon: it closes volume intervals by
        # it and, with several flow-trackers, merges their events up to the lowest of them.
        # detectors merge shards (and a pool merges every sensor's): they need every horizon
        merging = self.cfg.flowtrackers > 1 or self.uplink is not None
        for k in range(self.detectors):
            last = sent[k]
            if last is not None:
                self.tick_sent[k] = max(self.tick_sent[k], last)
                if not merging:
                    continue
            if horizon > self.tick_sent[k] + (0.0 if merging else DETECTOR_TICK_EVERY):
                self.tick_sent[k] = horizon
                self._send(FrameType.TICK, {"ts": horizon}, stop, None, k)

    def _add(self, records: list) -> None:
        """Records (tuples, and references when ``by_reference``) into the flow table, in order."""
        if self.by_reference:
            packed_records.add_records(self.table, records)
        else:
            self.table.add(records)

    def _learn_names_only(self, records: list) -> list:
        """DNS answers another tracker's flow carried (shared/routing.py): learned, not counted."""
        names = [r for r in records if r[3] == NAMES_ONLY]
        if not names:
            return records
        learn = self.table.names.learn
        for rec in names:
            if isinstance(rec[12], dict):
                learn(rec[12], rec[1])
        return [r for r in records if r[3] != NAMES_ONLY]

    # --- output ------------------------------------------------------------------------------------
    def _send_events(self, events: list[list], stop: Any, deadline: float | None = None) -> list:
        """Send events to their detector shards, at most EVENT_CHUNK a frame; per shard the time
        of the last one sent (or None)."""
        sent: list = [None] * self.detectors
        if not events:
            return sent
        if self.flow_log is not None:
            self.flow_log.write(events)
        if self.detectors == 1:
            parts = [events]
        else:
            parts = [[] for _ in range(self.detectors)]
            n = self.detectors
            for row in events:
                parts[detector_of(row, n)].append(row)
        for k, part in enumerate(parts):
            for i in range(0, len(part), EVENT_CHUNK):
                chunk = part[i : i + EVENT_CHUNK] if len(part) > EVENT_CHUNK else part
                if self._send(FrameType.FLOWS, chunk, stop, deadline, k):
                    self.stats.c["events_out"] += len(chunk)
                    sent[k] = chunk[-1][2]
        return sent

    def _finish(self, reason: str, stop: Any) -> None:
        """End every flow with ``reason``, send the events (and EOS at end of stream), flush stats."""
        merge = self.merge
        if reason != "eos":
            held = merge.drain()  # a stop: what waits for a slower decoder is counted in now
            if held:
                self._add(held)
                self.stats.c["records_in"] += len(held)
        end_ts = merge.highest if merge.highest > float("-inf") else 0.0
        self.table.finish(reason, end_ts)
        events = self.table.take_rows()
        deadline = None if reason == "eos" else time.monotonic() + SHUTDOWN_SEND_GRACE
        self._send_events(events, stop, deadline)
        self._update_counters()
        if reason == "eos":
            table = self.table
            body = {
                "origin": self.name,
                "flows": table.flows_started,
                "packets": table.records,
                "evicted": table.evicted,
                "decoders": [self.eos_bodies[s] for s in sorted(self.eos_bodies)],
            }
            if self.uplink is not None:
                self._end_sensor_stream(body, stop)
                return
            # before the end of stream (counted already): the detectors may end the run at once
            self.stats.flush_final(eos=1, frames_out=self.stats.c["frames_out"] + self.detectors)
            for k in range(self.detectors):
                self._send(FrameType.EOS, body, stop, deadline, k)
        else:
            self.stats.flush()

    def _send(
        self, ftype: str, body: Any, stop: Any, deadline: float | None = None, detector: int = 0
    ) -> bool:
        """Send with backpressure (block while the detector is behind) but keep noticing SIGTERM.

        While stopping, wait only until ``deadline`` for a detector that may be gone already.
        """
        buf = frames.encode(ftype, self.sender, self.seqs[detector], body)
        if self.uplink is not None:  # a sensor: queued or dropped and counted, never blocking
            self.uplink.send(detector, buf, len(body) if ftype == FrameType.FLOWS else 0)
            self.seqs[detector] += 1
            self.stats.c["frames_out"] += 1
            return True
        push = self.pushes[detector]
        while True:
            try:
                push.send(buf, zmq.NOBLOCK)
                break
            except zmq.Again:
                if stop and (deadline is None or time.monotonic() >= deadline):
                    log.warning("flowtracker: stopping with a %s frame the detector never took", ftype)
                    return False
                push.poll(POLL_MS, zmq.POLLOUT)
        self.seqs[detector] += 1
        self.stats.c["frames_out"] += 1
        return True

    def _end_sensor_stream(self, body: dict, stop: Any) -> None:
        """A sensor's end: EOS to every shard, the pool given a bounded time to take what waits
        (the rest dropped and counted), then the final stats, on which `pktscope run` ends."""
        assert self.uplink is not None
        for k in range(self.detectors):
            self._send(FrameType.EOS, body, stop, None, k)
        self.uplink.drain(SENSOR_DRAIN)
        self.stats.flush_final(eos=1)
        if self.relay is not None:  # the pool gets the sensor's final figures (if it is there)
            self.relay.next = 0.0
            self._relay_stats(stop)
            self.uplink.drain(SHUTDOWN_SEND_GRACE)

    def _relay_stats(self, stop: Any) -> None:
        """A sensor's flow-tracker 0 sends the sensor's stats to the pool now and then."""
        if self.relay is not None and self.relay.due():
            body = self.relay.collect()
            if body:
                self._send(FrameType.STATS, body, stop, None, 0)

    # --- stats ---------------------------------------------------------------------------------------
    def _update_counters(self) -> None:
        c = self.stats.c
        table = self.table
        base = self.base
        c["flows_started"] = base["flows_started"] + table.flows_started
        c["flows_ended"] = base["flows_ended"] + table.flows_ended
        c["flows_active"] = len(table)
        c["evicted"] = base["evicted"] + table.evicted
        c["bad_records"] = base["bad_records"] + table.bad_records
        c["release_forced"] = base["release_forced"] + table.release_forced
        c["events_waiting"] = table.waiting
        c["dns_names"] = len(table.names)
        info = self.stats.info
        merge = self.merge
        info["watermark"] = merge.watermark if merge.watermark > float("-inf") else 0.0
        info["decoders_done"] = len(merge.finished)
        c["merge_waiting"] = merge.buffered
        c["merge_forced"] = merge.forced
        c["merge_resets"] = merge.resets

    def _publish_stats(self) -> None:
        self._update_counters()  # a few dict stores per frame: cheap next to the frame's records
        self.stats.maybe_flush()

    def close(self, stop: Any = False) -> None:
        # After the end of stream, wait for the detectors to take it, unless told to stop meanwhile: a
        # stop (SIGTERM) that comes with capture's end of stream (compose stops all at once) must
        # not hold the process for the 60 s linger.
        if self.ended:
            names = self.cfg.local_detector_names()
            late = wait_until_ended(self.stats.r, self.stats.keys, names, END_OF_STREAM_LINGER_MS / 1000, stop)
            if late:
                log.warning("%s: %s did not confirm the end of stream", self.name, ", ".join(late))
        self.pull.close(linger=0)
        if self.uplink is not None:  # bounded: a pool that is gone costs a sensor SENSOR_DRAIN s
            if self.uplink.drain(SHUTDOWN_SEND_GRACE):
                self.stats.flush()
            self.uplink.close()
        # after the end of stream, wait for a slow or restarting detector to take the last frames
        for push in self.pushes:
            push.close(linger=END_OF_STREAM_LINGER_MS if self.ended and not stop else None)
        self.ctx.term()  # waits for that linger: exiting without it drops frames still queued
        if self.flow_log is not None:
            self.flow_log.close()
