"""The decoder service: PACKETS frames from capture in, RECORDS frames to the flow tracker out.

One process per decoder index. Capture shards packets by flow hash, so every packet of a flow
reaches the same decoder and the application layers (AppInspector) see whole conversations.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import zmq

from services.decoder import fastpath, packed_batch
from services.decoder.fastpath import decode_batch
from services.decoder.packed_batch import decode_packed
from services.decoder.ring import PacketRing, RingServer
from shared import frames, packed
from shared.config import PipelineConfig
from shared.continuity import Continuity, lost_ends, progress_path
from shared.frames import FrameError, FrameType, SequenceGaps
from shared.redis_conn import connect_made
from shared.redis_keys import Keys
from shared.routing import route_records
from shared.service import loop_starting
from shared.sockets import END_OF_STREAM_LINGER_MS, bind_pull, connect_push
from shared.stats import ServiceStats, wait_until_ended

log = logging.getLogger("pktscope.decoder")

POLL_MS = 100  # how often an idle or blocked decoder looks at the stop flag and heartbeat
COUNTERS = (
    "frames_in",
    "frames_out",
    "packets_in",
    "records_out",
    "decoded",
    "malformed",
    "non_ip",
    "bad_frames",
    "frames_lost",
    "app_errors",
)


def load_app_inspector() -> Any | None:
    """The application-layer inspector if services.decoder.app provides one, else None."""
    try:
        from services.decoder.app.inspector import AppInspector  # type: ignore[import-not-found]
    except ImportError as exc:
        log.info("no application-layer inspector (%s): records carry no app fields", exc)
        return None
    except Exception:  # a broken optional layer must not keep L2-L4 decoding from running
        log.exception("services.decoder.app.inspector failed to import; decoding without it")
        return None
    try:
        return AppInspector()
    except Exception:  # a broken optional layer must not keep L2-L4 decoding from running
        log.exception("AppInspector() failed; decoding without application layers")
        return None


def connect_redis(url: str, wait: float = 2.0, cluster: bool = False, stop: Any = False) -> redis.Redis | None:
    """Redis for stats. Unreachable now is no reason to give up: every write retries (and counts
    the outage); monitoring must not stop decoding. None only when ``stop`` came first (a Cluster
    client cannot be made before a node answers: shared/redis_conn.connect_made)."""
    client = connect_made(url, stop, cluster, "decoder", socket_connect_timeout=1, socket_timeout=2)
    if client is None:
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            client.ping()
            return client
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                log.warning("redis unreachable (%s): stats are written once it answers", exc)
                return client
            time.sleep(0.1)


def merged_capture_eos(bodies: dict[str, Any]) -> dict:
    """One upstream end of stream for several captures: counts summed, the latest packet time."""
    out: dict[str, Any] = {"origin": "capture", "captures": sorted(bodies)}
    errors = []
    for _name, body in sorted(bodies.items()):
        if not isinstance(body, dict):
            continue
        for key in ("packets", "dropped", "pcap_recv", "pcap_drop", "pcap_ifdrop"):
            value = body.get(key)
            if isinstance(value, int):
                out[key] = out.get(key, 0) + value
        last = body.get("last_ts")
        if isinstance(last, float | int) and last == last and last > out.get("last_ts", float("-inf")):
            out["last_ts"] = last
        if body.get("error"):
            errors.append(str(body["error"])[:200])
    out["error"] = "; ".join(errors) or None
    return out


class DecoderService:
    def __init__(self, cfg: PipelineConfig, index: int, app: Any | None, r: redis.Redis | None) -> None:
        self.cfg = cfg
        self.name = f"decoder-{index}"
        self.app = app
        self.stats = ServiceStats(self.name, r, Keys(cfg.redis_prefix))
        self.stats.info["index"] = index
        self.stats.info["app"] = int(app is not None)
        self.stats.info["hot_path"] = "compiled" if fastpath.COMPILED else "pure"  # shared/compiled.py
        if app is not None and hasattr(app, "all_counters"):
            # application-layer counters (TLS/QUIC/DNS parse problems, reassembly bounds) as app.*
            self.stats.sources.append(lambda: {f"app.{k}": v for k, v in app.all_counters().items()})
        c = self.stats.c
        for key in COUNTERS:
            c[key] = 0
        self.gaps = SequenceGaps()
        self.ended = False  # the end of stream was passed on (not a stop)
        # split live capture: the stream ends once every capture has ended it
        self.captures = max(1, cfg.captures)
        self.capture_eos: dict[str, Any] = {}
        self.capture_set = frozenset(cfg.capture_names())
        self.ctx = zmq.Context.instance()
        self.pull = bind_pull(self.ctx, cfg.decoder_endpoint(index), cfg.packets_hwm)
        # one PUSH per flow-tracker shard, each with its own frame sequence numbers
        self.trackers = max(1, cfg.flowtrackers)
        self.pushes = [connect_push(self.ctx, cfg.tracker_endpoint_of(j), cfg.records_hwm) for j in range(self.trackers)]
        self.seqs = [0] * self.trackers
        # restarted within the run: carry on the counters and the numbering, count what was lost
        self.continuity = Continuity(self.stats, self.gaps, COUNTERS, progress_path(cfg.run_dir, self.name))
        self.continuity.resume()
        if self.continuity.restarted:
            self.seqs = self.continuity.next_seqs(self.trackers)
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)
        self.ring = self.ring_server = None
        if cfg.keep_packets > 0:
            self.ring = PacketRing(cfg.keep_packets)
            self.ring_server = RingServer(self.ring, r, cfg.redis_prefix)
        # packed packets straight to packed records (compiled twin only; the ring and several
        # flow-tracker shards want the tuples)
        self.packed_path = packed_batch.COMPILED and self.ring is None and self.trackers == 1
        self.stats.info["decode_path"] = "packed" if self.packed_path else "tuples"

    # --- main loop -----------------------------------------------------------------------------
    def run(self, stop: Any) -> int:
        """Serve until EOS or the stop flag; return the exit status (0 both ways)."""
        log.info(
            "%s: %s -> %s",
            self.name,
            self.cfg.decoder_endpoint(int(self.stats.info["index"])),
            self.cfg.tracker_endpoint,
        )
        pull = self.pull
        loop_starting(self.stats)
        idle_since = time.monotonic()
        try:
            while not stop:
                try:
                    buf = pull.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    if self.ring_server is not None:
                        self.ring_server.poll()
                    self.stats.maybe_flush()
                    self.poller.poll(POLL_MS)
                    if self._upstream_ended_while_away(idle_since, stop):
                        return 0
                    continue
                idle_since = time.monotonic()
                self.continuity.handling()
                if self.handle(buf, stop):
                    log.info("%s: end of stream after %d packets", self.name, self.stats.c["packets_in"])
                    return 0
                self.continuity.progress(self.seqs)
                if self.ring_server is not None:
                    self.ring_server.poll()
                self.stats.maybe_flush()
            log.info("%s: stopping on signal", self.name)
            self.stats.flush()
            return 0
        finally:
            self.close(stop)

    def _upstream_ended_while_away(self, idle_since: float, stop: Any) -> bool:
        """Idle, and capture says it ended: its end of stream went with our dead predecessor, or
        with a capture killed between its final stats and its end-of-stream frame."""
        names = self.cfg.capture_names()
        if len(lost_ends(self.stats, names, idle_since, self.continuity.restarted)) < len(names):
            return False
        log.warning("%s: capture ended but its end of stream never came; counted as lost", self.name)
        self.stats.c["eos_lost"] += 1
        self._eos({"origin": "capture", "eos_lost": True}, stop)
        self.ended = not stop
        return True

    def handle(self, buf: bytes, stop: Any = False) -> bool:
        """Process one received frame; return True at end of stream."""
        c = self.stats.c
        try:
            frame = frames.decode(buf)
        except FrameError as exc:
            c["bad_frames"] += 1
            log.debug("dropped a bad frame: %s", exc)
            return False
        c["frames_in"] += 1
        c["frames_lost"] += self.gaps.see(frame.sender, frame.seq)
        ftype = frame.type
        if ftype == FrameType.PACKETS:
            self._packets(frame.body, stop)
        elif ftype == FrameType.TICK:
            for j in range(self.trackers):
                self._send(FrameType.TICK, frame.body, stop, j)
        elif ftype == FrameType.EOS:
            upstream = frame.body
            if self.captures > 1:
                if frame.sender not in self.capture_set:
                    self.stats.c["bad_frames"] += 1
                    return False
                self.capture_eos[frame.sender] = frame.body
                if len(self.capture_eos) < self.captures:
                    return False  # other captures are still sending
                upstream = merged_capture_eos(self.capture_eos)
            self._eos(upstream, stop)
            self.ended = not stop
            return True
        else:
            c["bad_frames"] += 1
        return False

    def _packets(self, body: Any, stop: Any) -> None:
        c = self.stats.c
        if self.packed_path and type(body) is bytes:
            self._packed_packets(body, stop)
            return
        try:
            body = packed.packets_of(body)  # packed by capture (shared/packed.py), or a list
            result = decode_batch(body, self.app)
        except (TypeError, ValueError):  # packet tuples of the wrong shape: the frame is bad
            c["bad_frames"] += 1
            return
        c["packets_in"] += len(body)
        if self.ring is not None:
            self.ring.add_batch(body, result.records)
        self._count(result)
        if self.trackers == 1:
            if self._send(FrameType.RECORDS, packed.records_body(result.records), stop):
                c["records_out"] += len(result.records)
            return
        for j, part in enumerate(route_records(result.records, self.trackers)):
            if part and self._send(FrameType.RECORDS, packed.records_body(part), stop, j):
                c["records_out"] += len(part)

    def _packed_packets(self, body: bytes, stop: Any) -> None:
        """A packed batch straight to a packed RECORDS body (services/decoder/packed_batch.py)."""
        c = self.stats.c
        try:
            batch = decode_packed(body, self.app)
        except ValueError:  # not a whole packed body: the frame is bad
            c["bad_frames"] += 1
            return
        c["packets_in"] += batch.packets
        self._count(batch)
        if self._send(FrameType.RECORDS, batch.body, stop):
            c["records_out"] += batch.records

    def _count(self, result: Any) -> None:
        """A decoded batch's counters (fastpath.BatchResult or packed_batch.PackedBatch)."""
        c = self.stats.c
        c["decoded"] += result.decoded
        c["malformed"] += result.malformed
        c["non_ip"] += result.non_ip
        c["app_errors"] += result.app_errors

    def _eos(self, upstream: Any, stop: Any) -> None:
        c = self.stats.c
        body = {
            "origin": self.name,
            "packets": c["packets_in"],
            "decoded": c["decoded"],
            "malformed": c["malformed"],
            "non_ip": c["non_ip"],
            "records": c["records_out"],
            "bad_frames": c["bad_frames"],
            "frames_lost": c["frames_lost"],
            "app_errors": c["app_errors"],
            "upstream": upstream,
        }
        # before the end of stream (counted already): downstream may finish the run at once
        self.stats.flush_final(eos=1, frames_out=c["frames_out"] + self.trackers)
        for j in range(self.trackers):
            self._send(FrameType.EOS, body, stop, j)

    def _send(self, ftype: str, body: Any, stop: Any, tracker: int = 0) -> bool:
        """Send with backpressure (block while the tracker is behind) but keep noticing SIGTERM."""
        buf = frames.encode(ftype, self.name, self.seqs[tracker], body)
        push = self.pushes[tracker]
        while True:
            try:
                push.send(buf, zmq.NOBLOCK)
                break
            except zmq.Again:
                if stop:
                    log.warning("%s: stopping with a frame the tracker never took", self.name)
                    return False
                push.poll(POLL_MS, zmq.POLLOUT)
        self.seqs[tracker] += 1
        self.stats.c["frames_out"] += 1
        return True

    def close(self, stop: Any = False) -> None:
        # After the end of stream, wait for the trackers to take it, unless told to stop meanwhile: a
        # stop (SIGTERM) that comes with capture's end of stream (compose stops all at once) must
        # not hold the process for the 60 s linger.
        if self.ended:
            names = self.cfg.tracker_names()
            late = wait_until_ended(self.stats.r, self.stats.keys, names, END_OF_STREAM_LINGER_MS / 1000, stop)
            if late:
                log.warning("%s: %s did not confirm the end of stream", self.name, ", ".join(late))
        self.pull.close(linger=0)
        # after the end of stream, wait for a slow or restarting tracker to take the last frames
        for push in self.pushes:
            push.close(linger=END_OF_STREAM_LINGER_MS if self.ended and not stop else None)
        self.ctx.term()  # waits for them: plain process exit would drop what is still queued
