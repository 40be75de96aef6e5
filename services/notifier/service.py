"""The notifier process: reads the alert stream with one Redis consumer group per --notify URL,
groups and rate-limits, and delivers through Apprise.

Delivery is at least once: an alert is acknowledged (XACK) only after the notification naming
it went out. A notifier killed before that finds it in its pending list when it starts again
and sends it then; the ids already delivered are kept in ``P:notify:<url>:sent`` (bounded), so
a restart does not send them twice (only a kill in the instant between the receiver's answer
and that write can). A failed delivery is retried with exponential backoff (1 s doubling to
60 s) and counted (``delivery_failures``, shown by `pktscope status`); nothing is dropped. At
the end of a replay (the detector's end of stream) every open digest goes out at once and the
notifier says ``drained`` in its stats, which `pktscope run` waits for.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import redis

from services.detector.alerts import from_entry
from services.notifier.digest import Digest, Grouper, RateLimit, render
from services.notifier.targets import Target, TargetError, desktop_available, notify_send, parse_target
from shared import stats as stats_module
from shared.config import PipelineConfig
from shared.observe_keys import ObserveKeys
from shared.redis_conn import connect_until_ready, is_cluster
from shared.service import StopFlag, loop_starting
from shared.stats import ServiceStats

log = logging.getLogger(__name__)

READ_COUNT = 500
IDLE_SLEEP = 0.1
BACKOFF_BASE, BACKOFF_MAX = 1.0, 60.0
MAX_SENT = 100_000  # delivered ids remembered per URL
CONSUMER = "notifier"


class Channel:
    """One --notify URL: its consumer group, open digests, rate limit and retry state."""

    def __init__(self, target: Target, keys: ObserveKeys, now: float) -> None:
        self.target = target
        self.group = keys.notify_group(target.ident)
        self.sent_key = keys.notify_sent(target.ident)
        self.grouper = Grouper(target.group_window)
        self.limit = RateLimit(target.rate_count, target.rate_period, now)
        self.ready: list[Digest] = []
        self.failures_in_row = 0
        self.next_try = 0.0
        self.limited = False
        self.warned = False
        self.unavailable = 0  # desktop:// notifications with no desktop to show them
        self.apprise = None
        if target.scheme != "desktop":
            import apprise

            self.apprise = apprise.Apprise()
            self.apprise.add(target.apprise_url)

    def pending(self) -> int:
        return self.grouper.pending_ids() + sum(len(d.alerts) for d in self.ready)

    def send(self, title: str, body: str, severity: str) -> bool:
        if self.apprise is None:
            if not desktop_available():
                # no session bus (a service, root without a desktop): nothing can show it; counted
                # (desktop_unavailable) and logged once, instead of retrying for ever
                if not self.warned:
                    log.warning("notifier: desktop:// has no session bus or notify-send here; skipping")
                    self.warned = True
                self.unavailable += 1
                return True
            urgency = {"critical": "critical", "warning": "normal"}.get(severity, "low")
            return notify_send(title, body, urgency)
        import apprise

        kind = {"critical": apprise.NotifyType.FAILURE, "warning": apprise.NotifyType.WARNING}.get(
            severity, apprise.NotifyType.INFO
        )
        try:
            return bool(self.apprise.notify(title=title, body=body, notify_type=kind))
        except Exception as exc:  # a plugin bug must not stop the notifier
            log.error("notifier: %s raised %s", self.target.scheme, exc)
            return False


class NotifierService:
    def __init__(self, cfg: PipelineConfig, stop: StopFlag) -> None:
        self.cfg = cfg
        self.stop = stop
        self.keys = ObserveKeys(cfg.redis_prefix)
        self.r: redis.Redis | None = None
        self.stats: ServiceStats | None = None
        self.channels: list[Channel] = []
        self.detector_done = False

    # --- start ----------------------------------------------------------------------------------
    def _connect(self) -> bool:
        self.r = connect_until_ready(self.cfg.effective_redis_url, self.stop, self.cfg.redis_cluster, "notifier")
        return self.r is not None

    def _start_id(self) -> str:
        """A new consumer group starts at this run's start: older alerts were told (or not) before."""
        try:
            started = (Path(self.cfg.run_dir) / "pipeline.json").stat().st_mtime
        except OSError:
            started = time.time()
        return f"{int(started * 1000) - 1000}-0"

    def start(self) -> bool:
        if not self._connect():
            return False
        assert self.r is not None
        self.stats = ServiceStats("notifier", self.r, self.keys)
        now = time.monotonic()
        for url in self.cfg.notify:
            try:
                target = parse_target(url)
            except TargetError as exc:
                log.error("notifier: skipping a --notify URL: %s", exc)
                self.stats.c["bad_targets"] += 1
                continue
            channel = Channel(target, self.keys, now)
            try:
                self.r.xgroup_create(self.keys.alerts(), channel.group, id=self._start_id(), mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.channels.append(channel)
            self.stats.info[f"target.{target.ident}"] = f"{target.scheme}:// min {target.min_severity}"
        for name in (
            "alerts_in",
            "notifications_sent",
            "alerts_delivered",
            "delivery_failures",
            "alerts_filtered",
        ):
            self.stats.c[name] += 0
        self._recover()
        return True

    def _recover(self) -> None:
        """What a killed predecessor read but never delivered: deliver it (minus what it did deliver)."""
        assert self.r is not None and self.stats is not None
        for ch in self.channels:
            start = "0"
            while True:
                reply = self.r.xreadgroup(ch.group, CONSUMER, {self.keys.alerts(): start}, count=READ_COUNT)
                entries = reply[0][1] if reply else []
                entries = [(i, f) for i, f in entries if f]  # trimmed-away entries come back empty
                if not entries:
                    break
                ids = [i for i, _ in entries]
                pipe = self.r.pipeline(transaction=False)
                for i in ids:
                    pipe.zscore(ch.sent_key, i)
                done = {i for i, score in zip(ids, pipe.execute(), strict=True) if score is not None}
                if done:
                    self.r.xack(self.keys.alerts(), ch.group, *done)
                    self.stats.c["recovered_already_sent"] += len(done)
                self._feed(ch, [(i, f) for i, f in entries if i not in done], time.monotonic())
                self.stats.c["recovered_pending"] += len(entries) - len(done)
                start = ids[-1]

    # --- loop -------------------------------------------------------------------------------------
    def _feed(self, ch: Channel, entries: list, now: float) -> None:
        assert self.r is not None and self.stats is not None
        skip = []
        for entry_id, fields in entries:
            alert = from_entry(entry_id, fields)
            self.stats.c["alerts_in"] += 1
            if alert is None or not ch.target.wants(str(alert.get("severity", ""))):
                skip.append(entry_id)
                continue
            ch.grouper.add(entry_id, alert, now)
        if skip:
            self.r.xack(self.keys.alerts(), ch.group, *skip)
            self.stats.c["alerts_filtered"] += len(skip)

    def _deliver(self, ch: Channel, now: float) -> None:
        assert self.r is not None and self.stats is not None
        ch.ready.extend(ch.grouper.due(now, everything=self.detector_done))
        while ch.ready and now >= ch.next_try:
            if not ch.limit.available(now):
                if not ch.limited:
                    ch.limited = True
                    self.stats.c["rate_limited"] += 1  # times a digest had to wait for a slot
                return
            ch.limited = False
            # more digests waiting than slots left: the last slot carries all the rest in one summary
            batch = (
                list(ch.ready) if len(ch.ready) > ch.limit.tokens and ch.limit.tokens < 2 else ch.ready[:1]
            )
            title, body, severity = render(batch)
            if ch.send(title, body, severity):
                ids = [i for d in batch for i in d.ids]
                # one slot only on a Cluster: there the three writes go unbatched (still idempotent)
                pipe = self.r.pipeline(transaction=not is_cluster(self.r))
                pipe.zadd(ch.sent_key, {i: time.time() for i in ids})
                pipe.xack(self.keys.alerts(), ch.group, *ids)
                pipe.zremrangebyrank(ch.sent_key, 0, -MAX_SENT - 1)
                pipe.execute()
                del ch.ready[: len(batch)]
                ch.limit.take(now)
                ch.failures_in_row = 0
                self.stats.c["notifications_sent"] += 1
                self.stats.c["alerts_delivered"] += len(ids)
            else:
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**ch.failures_in_row)
                ch.failures_in_row += 1
                ch.next_try = now + delay
                self.stats.c["delivery_failures"] += 1
                self.stats.c[f"delivery_failures.{ch.target.ident}"] += 1
                log.warning(
                    "notifier: delivery to %s:// failed (%d in a row); retrying in %.0f s",
                    ch.target.scheme,
                    ch.failures_in_row,
                    delay,
                )
                return

    def _detector_finished(self) -> bool:
        """Every detector (shard) of this run said end of stream."""
        assert self.r is not None
        pipe = self.r.pipeline(transaction=False)
        for name in self.cfg.detector_names():
            pipe.hmget(self.keys.stats(name), "eos", "run_id")
        return all(bool(eos) and run_id == stats_module.RUN_ID for eos, run_id in pipe.execute())

    def run(self) -> int:
        if not self.start():
            return 0
        assert self.r is not None and self.stats is not None
        loop_starting(self.stats)
        log.info(
            "notifier: %d target(s), pid %d on %s", len(self.channels), os.getpid(), socket.gethostname()
        )
        while not self.stop:
            try:
                got = 0
                now = time.monotonic()
                finished = not self.cfg.live and self._detector_finished()
                for ch in self.channels:
                    reply = self.r.xreadgroup(ch.group, CONSUMER, {self.keys.alerts(): ">"}, count=READ_COUNT)
                    entries = reply[0][1] if reply else []
                    got += len(entries)
                    self._feed(ch, entries, now)
                # end of a replay: everything is in the stream once the detector said eos and a read found nothing more
                self.detector_done = finished and got == 0
                for ch in self.channels:
                    self._deliver(ch, now)
            except redis.RedisError as exc:
                self.stats.redis_errors += 1
                log.warning("notifier: Redis error %s", exc)
                time.sleep(0.5)
                continue
            pending = sum(ch.pending() for ch in self.channels)
            self.stats.c["desktop_unavailable"] = sum(ch.unavailable for ch in self.channels)
            self.stats.c["alerts_pending"] = pending
            self.stats.info["drained"] = int(self.detector_done and pending == 0)
            self.stats.maybe_flush()
            if not got:
                time.sleep(IDLE_SLEEP)
        self.stats.flush()
        return 0
