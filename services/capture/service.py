"""Capture loop: read packets, shard them by flow, send batches to the decoders.

Offline (a file) the sends block when a decoder's queue is full: a replay loses nothing.
Live the sends never block: a batch for a full (or absent) decoder is dropped and counted
per decoder, and libpcap's own drop counters are reported beside them.
"""

from __future__ import annotations

import logging
import time

import redis
import zmq

from services.capture import sharding
from services.capture.pcap_deal import PcapDealer
from services.capture.replay import ListDealer, dealer_for, take_batch
from services.capture.sharding import make_sharder
from services.capture.sources import CaptureError, LiveSource, OfflineSource, fanout_group_id
from shared import packed
from shared.config import PipelineConfig
from shared.continuity import Continuity
from shared.frames import FrameType, SequenceGaps, encode
from shared.redis_conn import connect
from shared.redis_keys import Keys
from shared.service import StopFlag, tune_gc
from shared.sockets import END_OF_STREAM_LINGER_MS, connect_push
from shared.stats import ServiceStats, wait_until_ended, wait_until_ready

log = logging.getLogger("capture")

SENDER = "capture"
# offline: a watermark goes to every decoder this often, so an idle shard holds the others back
# by at most this many packets in the flow-tracker's merge. Not also per second of packet time:
# every tick flushes every partial batch, and sv-merged.pcap's 4,138 distinct seconds made 20x
# more frames that way.
TICK_EVERY_PACKETS = 4096
LIVE_TICK_SECONDS = 0.25  # live: and this often on the wall clock, so idle decoders keep time
LIVE_TICK_LAG = 0.1  # live: a tick's packet time trails the wall clock by this much, so packets
#                      still in the kernel's buffer (block mode: up to 50 ms) are not behind it
EOS_SEND_TIMEOUT_MS = END_OF_STREAM_LINGER_MS
# live or stopped (SIGTERM): the decoders may be stopping too (compose stops every service at
# once), so the end of stream is offered this long, not the replay's minute
STOP_EOS_SEND_TIMEOUT_MS = 1000
DOWNSTREAM_READY_WAIT = 15.0  # offline: seconds to wait for the other services to start
RESERVE_PACKETS = 1024  # offline: packets a resume position is written ahead (a restart loses them)


class Capture:
    """One capture process. With ``captures`` C > 1 (live), capture ``index`` k numbers its
    packets k + C, k + 2C, ...: numbers stay unique across captures and ``num % C`` tells the
    flow-tracker which capture a record or tick came from (services/flowtracker/capture_merge.py).
    """

    def __init__(self, cfg: PipelineConfig, stop: StopFlag | None = None, index: int = 0) -> None:
        self.cfg = cfg
        self.stop = stop if stop is not None else StopFlag()
        self.index = index
        self.name = cfg.capture_name(index)  # "capture" when alone: frames and stats as before
        self.stride = max(1, cfg.captures)
        self.n = max(1, cfg.decoders)
        self.ctx = zmq.Context.instance()
        self.socks = [
            connect_push(self.ctx, cfg.decoder_endpoint(i), cfg.packets_hwm, immediate=cfg.live)
            for i in range(self.n)
        ]
        self.seq = [0] * self.n
        self.batches: list[list[tuple]] = [[] for _ in range(self.n)]  # live; a replay's dealer holds its own
        self.dealer: ListDealer | PcapDealer | None = None
        self.drops = [0] * self.n
        try:
            r = connect(
                cfg.effective_redis_url, cluster=cfg.redis_cluster, socket_timeout=1
            )  # stats must not hold capture up
        except Exception:  # stats are best effort; redis-py raises several types here
            r = None
        self.stats = ServiceStats(self.name, r, Keys(cfg.redis_prefix))
        self.stats.info["hot_path"] = "compiled" if sharding.COMPILED else "pure"  # shared/compiled.py
        self.count = 0
        self.last_ts = 0.0
        # offline: packets up to ``position`` were handed out (or lost with a dead predecessor)
        self.position = 0
        self.resume_after = 0  # restarted within the run: skip what the predecessor handed out
        self.ended_before = False  # restarted after the predecessor had ended the replay
        if not cfg.live:
            self._resume()

    # --- restarts ---------------------------------------------------------------------------
    def _resume(self) -> None:
        """A capture restarted within its run carries on where its predecessor got to.

        ``position`` is written *before* any packet past it is sent, reserved ``RESERVE_PACKETS``
        ahead (one Redis write per ~1,024 packets, not per frame), so nothing is ever sent twice.
        What the predecessor had read but not sent (other decoders' partial batches, frames still
        queued, the rest of the reservation) is lost and counted by `pktscope run` (captured minus
        decoded: "incomplete"). The new capture numbers its frames from 0 again, which decoders
        take as a sender restart, not as a gap: the packet count is the exact measure.
        """
        cont = Continuity(self.stats, SequenceGaps(), ("frames_out",))
        cont.resume()
        self.ended_before = cont.ended_before
        if not cont.restarted:
            return
        prev = cont.previous
        self.resume_after = self.position = int(float(prev.get("position", 0) or 0))
        self.stats.info["resumed_after"] = self.resume_after
        log.warning("capture: restarted within the run; resuming after packet %d", self.resume_after)

    def _checkpoint(self, last_num: int) -> None:
        """Before packets up to ``last_num`` go out: reserve the next stretch in Redis."""
        if last_num <= self.position:
            return
        self.position = last_num + RESERVE_PACKETS
        st = self.stats
        if st.r is None or st.outages.down:
            return  # Redis out: carry on (a restart now would resend from the last reservation)
        try:
            # not waited for (shared/deferred_write.py): it is in Redis's socket before the
            # packets leave, so a kill after the send cannot lose it
            st.write_deferred({"position": self.position})
        except redis.RedisError:
            st.redis_errors += 1
            st.outages.failed()

    # --- sending --------------------------------------------------------------------------
    def _send(self, i: int, ftype: str, body, block: bool, last_num: int = 0) -> bool:
        if block and last_num:  # offline packets
            self._checkpoint(last_num)
        if ftype == FrameType.PACKETS and type(body) is list:
            body = packed.packets_body(body)
        frame = encode(ftype, self.name, self.seq[i], body)
        self.seq[i] += 1
        try:
            self.socks[i].send(frame, 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.stats.c["frames_out"] += 1
        return True

    def _flush(self, i: int) -> None:
        # a replay's dealer holds its batches; live capture's are here
        taken = self.dealer.take(i) if self.dealer is not None else take_batch(self.batches, i)
        if taken is None:
            return
        body, count, last_num = taken
        if not self._send(i, FrameType.PACKETS, body, not self.cfg.live, last_num):
            self.drops[i] += count
            self.stats.c[f"dropped_decoder_{i}"] += count
            self.stats.c["dropped"] += count

    def _flush_all(self) -> None:
        for i in range(self.n):
            self._flush(i)

    def _tick(self) -> None:
        """Flush every partial batch, then tell every decoder how far capture has got: the
        number of packets handed out and the packet time of the last one.

        Flushing first keeps the watermark behind every packet already handed out. The
        flow-tracker puts records back in capture order up to the number every decoder has
        reached, so an idle decoder must hear this even when it gets no packets.
        """
        self._flush_all()
        body = {"ts": self.last_ts, "num": self.count * self.stride + self.index}
        for i in range(self.n):
            self._send(i, FrameType.TICK, body, block=not self.cfg.live)

    def _eos(self, error: str | None, source_stats: tuple[int, int, int]) -> None:
        self._flush_all()
        body = {
            "origin": self.name,
            "packets": self.count,
            "last_ts": self.last_ts,  # every flow-tracker shard ends its flows at the same time
            "error": error,
            "dropped": sum(self.drops),
            "pcap_recv": source_stats[0],
            "pcap_drop": source_stats[1],
            "pcap_ifdrop": source_stats[2],
        }
        for i, sock in enumerate(self.socks):
            sock.setsockopt(
                zmq.SNDTIMEO, STOP_EOS_SEND_TIMEOUT_MS if (self.cfg.live or self.stop) else EOS_SEND_TIMEOUT_MS
            )
            try:
                sock.send(encode(FrameType.EOS, self.name, self.seq[i], body))
                self.seq[i] += 1
            except zmq.Again:
                log.warning("decoder-%d did not take the end-of-stream marker", i)

    def _wait_for_downstream(self) -> None:
        """Start once the decoders, flow-tracker and detector are up (or after a while)."""
        if self.stats.r is None:
            return
        names = (
            [f"decoder-{i}" for i in range(self.n)]
            + self.cfg.tracker_names()
            + self.cfg.local_detector_names()
        )
        if self.cfg.procwatch_enabled:
            names.append("procwatch")  # its BPF programs attached: the first flows are attributed
        late = wait_until_ready(self.stats.r, self.stats.keys, names, DOWNSTREAM_READY_WAIT)
        if late:
            log.warning(
                "starting the replay without %s: not ready after %.0f s",
                ", ".join(late),
                DOWNSTREAM_READY_WAIT,
            )

    # --- the two modes ----------------------------------------------------------------------
    def run_offline(self, source: OfflineSource) -> None:
        dealer = self.dealer = dealer_for(source, self.n, self.cfg.batch_size)
        self.stats.info["replay_path"] = "records" if isinstance(dealer, ListDealer) else "packed pcap"
        flush = self._flush
        num = 0
        next_tick = TICK_EVERY_PACKETS
        self._wait_for_downstream()
        self.stats.info["cpu_at_ready"] = round(time.process_time(), 4)  # start-up, left out by the bench
        self.stats.info["started_packets"] = time.time()
        ts = self.last_ts
        if self.resume_after:  # what a dead predecessor handed out is read past, not sent again
            num += dealer.skip(self.resume_after)
        while True:
            num, last, full = dealer.deal(num, next_tick)
            if last is not None:
                ts = last
            if full >= 0:
                flush(full)
            if num >= next_tick:
                next_tick = num + TICK_EVERY_PACKETS
                self.count = num
                self.last_ts = ts
                self._tick()
                self.stats.c["packets"] = num
                self.stats.maybe_flush()
                if self.stop:
                    break
            if full == -2:
                break
        self.count = num
        if num:
            self.last_ts = ts
        self.stats.c["packets"] = num
        error = dealer.error
        if error:
            log.error("capture file ended early after %d packets: %s", num, error)
        self._flush_all()
        dealer.close()
        # final stats first: once the end of stream is out, `pktscope run` may read them any moment
        self.stats.flush_final(eos=1, error=error or "", finished=time.time())
        self._eos(error, source.stats())

    def run_live(self, source: LiveSource) -> None:
        # The interface is open: what arrives while the other services start waits in the
        # kernel buffer instead of being dropped for want of a connected decoder.
        self._wait_for_downstream()
        shard = make_sharder(source.linktype, self.n)
        lt = source.linktype
        batches = self.batches
        bsize = self.cfg.batch_size
        timeout = self.cfg.batch_timeout
        stride = self.stride
        state = {"num": self.index}  # the last packet number handed out (see the class docstring)

        def on_packet(ts: float, data) -> None:
            state["num"] += stride
            data = bytes(data)
            i = shard(data)
            b = batches[i]
            b.append((state["num"], ts, lt, len(data), data))
            self.last_ts = ts
            if len(b) >= bsize:
                self._flush(i)

        next_flush = time.monotonic() + timeout
        next_tick = time.monotonic() + LIVE_TICK_SECONDS
        while not self.stop:
            source.poll(timeout, on_packet)
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + timeout
                self._flush_all()
            if now >= next_tick:
                next_tick = now + LIVE_TICK_SECONDS
                # live packet time follows the wall clock between packets
                self.last_ts = max(self.last_ts, time.time() - LIVE_TICK_LAG)
                self.count = state["num"] // stride
                self._tick()
                self._publish_live_stats(source, self.count)
        self.count = state["num"] // stride
        self._flush_all()
        self._publish_live_stats(source, self.count)
        self.stats.flush_final(eos=1, finished=time.time())
        self._eos(None, source.stats())

    def _publish_live_stats(self, source: LiveSource, num: int) -> None:
        recv, drop, ifdrop = source.stats()
        self.stats.c["packets"] = num
        self.stats.c["pcap_recv"] = recv
        self.stats.c["pcap_drop"] = drop
        self.stats.c["pcap_ifdrop"] = ifdrop
        self.stats.maybe_flush()

    def close(self) -> None:
        # a replay waits for slow or restarting decoders to take the last batches; a stop does not
        linger = EOS_SEND_TIMEOUT_MS if not (self.cfg.live or self.stop) else None
        if linger is not None:
            names = [f"decoder-{i}" for i in range(self.n)]
            late = wait_until_ended(self.stats.r, self.stats.keys, names, EOS_SEND_TIMEOUT_MS / 1000)
            if late:
                log.warning("%s did not confirm the end of stream", ", ".join(late))
        for sock in self.socks:
            sock.close(linger=linger)
        # term() waits (up to the linger) for queued frames to leave; without it, process exit
        # throws away the last batches and the end-of-stream marker.
        self.ctx.term()


def run(cfg: PipelineConfig, index: int = 0) -> int:
    """Run the capture until the file ends or a stop signal; return the exit code."""
    stop = StopFlag()
    split = cfg.live and cfg.captures > 1
    try:
        source = (
            LiveSource(
                cfg.interface,
                cfg.bpf,
                cfg.snaplen,
                cfg.promisc,
                fanout_group=fanout_group_id(cfg.run_id) if split else None,
            )
            if cfg.live
            else OfflineSource(cfg.read_path)
        )
    except CaptureError as exc:
        log.error("%s", exc)
        return 2
    cap = Capture(cfg, stop, index if split else 0)
    cap.stats.info["linktype"] = source.linktype
    cap.stats.info["mode"] = "live" if cfg.live else "offline"
    tune_gc()
    try:
        if isinstance(source, LiveSource):
            cap.run_live(source)
        elif cap.ended_before:
            # killed after its final stats, maybe before its end of stream left: reading the file
            # again would send every packet twice. The stats now carry this pid, which tells
            # the decoders that the end of stream they still wait for is lost (ended_upstream).
            log.warning("capture: the replay had ended before this restart; nothing left to send")
            cap.stats.flush()
        else:
            cap.run_offline(source)
    finally:
        cap.close()
    log.info("capture done: %d packets, %d dropped", cap.count, sum(cap.drops))
    return 0
