"""The procwatch process: kernel events in, socket-owner facts out (ZeroMQ PUB), stats in Redis.

Loop: wait on the ring buffer (up to 100 ms), turn each record into process-table updates
(exec/fork/exit) or a socket fact (connect/listen/send, with the owner's facts), publish the
facts read in that round as one message, heartbeat. When the BPF programs cannot load (not root,
no BTF, lockdown, no tracefs) the service stays up in "psutil" mode and says why in its stats:
the detector then attributes with its socket-table poll, as before.

Message on ``cfg.procwatch_endpoint``: two frames ``[b"facts", msgpack({"seq", "facts"})]``;
``seq`` counts messages from 0 so a subscriber counts the ones it lost.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgpack
import zmq

from services.procwatch import events
from services.procwatch.loader import BpfProgram, BpfUnavailable
from services.procwatch.proctable import ProcessTable, wall_offset
from shared.config import PipelineConfig
from shared.redis_conn import connect_until_ready
from shared.redis_keys import Keys
from shared.service import StopFlag, loop_starting
from shared.sockets import bind_pub
from shared.stats import ServiceStats

log = logging.getLogger(__name__)

TOPIC = b"facts"
PUB_HWM = 10_000  # messages (each holds the facts of one ring-buffer round)
POLL_MS = 100
_KINDS = {events.EV_SOCK: "connect", events.EV_LISTEN: "listen"}
PUBLIC = (
    "pid", "ppid", "uid", "user", "comm", "exe", "argv", "cmdline", "parent_exe", "cgroup",
    "cgroup_id", "container_id", "sha256", "exe_deleted", "started", "exited", "source",
)  # fmt: skip


class ProcwatchService:
    def __init__(self, cfg: PipelineConfig, stop: StopFlag) -> None:
        self.cfg = cfg
        self.stop = stop
        self.keys = Keys(cfg.redis_prefix)
        self.table = ProcessTable()
        self.pending: list[dict[str, Any]] = []
        self.seq = 0
        self.offset = wall_offset()
        self.me = os.getpid()
        self.stats: ServiceStats | None = None
        self.prog: BpfProgram | None = None

    # --- kernel records -------------------------------------------------------------------------
    def on_record(self, buf: bytes) -> None:
        assert self.stats is not None
        c = self.stats.c
        ev = events.parse(buf)
        if ev is None:
            c["bad_records"] += 1
            return
        wall = ev.ktime / 1e9 + self.offset
        if isinstance(ev, events.ProcEvent):
            if ev.kind == events.EV_EXEC:
                self.table.on_exec(ev, wall)
            elif ev.kind == events.EV_FORK:
                self.table.on_fork(ev, wall)
            else:
                self.table.on_exit(ev, wall)
            return
        if ev.tgid == self.me:
            return
        c["socket_events"] += 1
        proc = self.table.owner(ev, wall)
        kind = _KINDS.get(ev.kind, "connect") if ev.proto == 6 else "send"
        self.pending.append(
            {
                "kind": kind,
                "proto": ev.proto,
                "lip": ev.laddr,
                "lport": ev.lport,
                "rip": ev.raddr,
                "rport": ev.rport,
                "ts": wall,
                "tid": ev.pid,
                "sock_type": ev.state if ev.proto != 6 else 1,
                "proc": {k: proc.get(k) for k in PUBLIC},
            }
        )

    def publish(self, pub: zmq.Socket) -> None:
        if not self.pending:
            return
        assert self.stats is not None
        body = msgpack.packb({"seq": self.seq, "facts": self.pending}, use_bin_type=True)
        self.seq += 1
        try:
            pub.send_multipart([TOPIC, body], flags=zmq.NOBLOCK)
            self.stats.c["facts_out"] += len(self.pending)
        except zmq.Again:
            self.stats.c["facts_dropped"] += len(self.pending)
        self.pending = []

    # --- the loop -------------------------------------------------------------------------------
    def _load(self) -> None:
        assert self.stats is not None
        info = self.stats.info
        try:
            self.prog = BpfProgram(self.on_record)
        except BpfUnavailable as exc:
            info.update(mode="psutil", reason=str(exc))
            log.warning("procwatch: kernel events unavailable, attribution falls back to psutil: %s", exc)
            return
        except OSError as exc:
            info.update(mode="psutil", reason=f"loading the BPF programs failed: {exc}")
            log.warning("procwatch: %s", info["reason"])
            return
        info.update(
            mode="bpf",
            reason=f"kernel events: {len(self.prog.attached)} eBPF tracepoint programs attached"
            + (f", missing {', '.join(self.prog.missing)}" if self.prog.missing else ""),
            attached=",".join(self.prog.attached),
            missing=",".join(self.prog.missing),
        )
        log.info("procwatch: attached %s; missing %s", self.prog.attached, self.prog.missing or "none")

    def _counters(self) -> dict[str, int]:
        out = {f"table.{k}": v for k, v in self.table.counters.items()}
        out["processes"] = len(self.table)
        out.update({f"identity.{k}": v for k, v in self.table.identity.counters.items()})
        if self.prog is not None:
            out.update(self.prog.lost())
        return out

    def run(self) -> int:
        r = connect_until_ready(self.cfg.effective_redis_url, self.stop, self.cfg.redis_cluster, "procwatch")
        if r is None:
            return 0
        self.stats = ServiceStats("procwatch", r, self.keys)
        self.stats.sources.append(self._counters)
        ctx = zmq.Context()
        pub = bind_pub(ctx, self.cfg.procwatch_endpoint, PUB_HWM)
        self._load()
        for name in ("socket_events", "facts_out", "facts_dropped", "bad_records"):
            self.stats.c[name] += 0
        loop_starting(self.stats)
        next_offset = time.monotonic() + 10
        try:
            while not self.stop:
                if self.prog is not None:
                    self.prog.poll(POLL_MS)
                    self.publish(pub)
                else:
                    time.sleep(POLL_MS / 1000)
                if time.monotonic() >= next_offset:  # NTP slews the wall clock
                    next_offset = time.monotonic() + 10
                    self.offset = wall_offset()
                self.stats.maybe_flush()
        finally:
            if self.prog is not None:
                self.prog.close()
            self.stats.flush()
            pub.close(linger=0)
            ctx.term()
        return 0
