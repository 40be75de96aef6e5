"""A sensor's link to the detector pool: never blocks the sensor, loses nothing quietly.

On a sensor (``pktscope run --role sensor``) the flow-trackers send their frames over TCP (CURVE)
to the pool's detector shards. A pool that is slow, restarting or unreachable must not stall
capture. A frame goes to ZeroMQ only while the shard's connection is up: the socket monitor
said its handshake succeeded (a CURVE key the pool refuses never gets there; ZeroMQ itself
would accept frames into a connection that is then refused and lose them silently). Otherwise,
or when ZeroMQ's queue (``hwm``) is full, the frame waits in a bounded local queue per shard;
once that is full the oldest frame is dropped and its events are counted
(``pool_dropped_frames``, ``pool_dropped_events``; a refusal: ``pool_refused``). The pool sees
the gap in the sequence numbers as ``frames_lost`` too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from shared.curve import curve_client

log = logging.getLogger(__name__)

UPLINK_LINGER_MS = 2000  # what ZeroMQ still holds on a live connection at close
_UP = zmq.EVENT_HANDSHAKE_SUCCEEDED
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH
_DOWN = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | _REFUSED
)


class Uplink:
    """One PUSH socket per detector shard of the pool, each with a bounded local queue."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        hwm: int,
        keys_dir: str,
        client: str,
        max_queued: int,
        counters: Counter,
    ) -> None:
        self.c = counters
        self.max_queued = max(1, max_queued)
        self.endpoints = endpoints
        self.socks: list[zmq.Socket] = []
        self.monitors: list[zmq.Socket] = []
        self.up = [False] * len(endpoints)
        for endpoint in endpoints:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.LINGER, UPLINK_LINGER_MS)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if keys_dir:
                curve_client(sock, Path(keys_dir), client)
            self.monitors.append(sock.get_monitor_socket(_UP | _DOWN))
            sock.connect(endpoint)
            self.socks.append(sock)
        self.queues: list[deque[tuple[bytes, int]]] = [deque() for _ in endpoints]
        for name in ("pool_queued", "pool_dropped_frames", "pool_dropped_events", "pool_refused"):
            self.c[name] += 0

    def send(self, shard: int, buf: bytes, events: int = 0) -> None:
        """Send ``buf`` (carrying ``events`` flow events) to ``shard`` now, or queue it, or drop the oldest."""
        queue = self.queues[shard]
        self._watch(shard)
        if queue:
            self._pump(shard)
        if not queue and self.up[shard]:
            try:
                self.socks[shard].send(buf, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
        if len(queue) >= self.max_queued:
            _, lost = queue.popleft()
            if not self.c["pool_dropped_frames"]:
                log.warning(
                    "pool unreachable or behind: local queue full, dropping (counted in pool_dropped_*)"
                )
            self._dropped(1, lost)
        queue.append((buf, events))
        self.c["pool_queued"] = self.queued

    def pump(self) -> None:
        """Hand ZeroMQ what waits here, as far as the pool takes it (called when idle)."""
        for shard in range(len(self.socks)):
            self._watch(shard)
            if self.queues[shard]:
                self._pump(shard)
        self.c["pool_queued"] = self.queued

    def _watch(self, shard: int) -> None:
        """Follow the connection's state from the socket monitor's events."""
        monitor = self.monitors[shard]
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == _UP:
                if not self.up[shard]:
                    log.info("connected to the pool's shard %d at %s", shard, self.endpoints[shard])
                self.up[shard] = True
                continue
            self.up[shard] = False
            if event == _REFUSED:
                if not self.c["pool_refused"]:
                    log.error(
                        "the pool at %s refused this sensor's CURVE key: its public key "
                        "(clients/NAME.key) must be in the pool's authorized/ directory",
                        self.endpoints[shard],
                    )
                self.c["pool_refused"] += 1

    def _pump(self, shard: int) -> None:
        queue, sock = self.queues[shard], self.socks[shard]
        while queue and self.up[shard]:
            try:
                sock.send(queue[0][0], zmq.NOBLOCK)
            except zmq.Again:
                return
            queue.popleft()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues)

    def drain(self, timeout: float) -> int:
        """At the end: wait up to ``timeout`` s for the pool to take what waits; drop and count the
        rest. Returns the frames dropped."""
        deadline = time.monotonic() + timeout
        while self.queued and time.monotonic() < deadline:
            self.pump()
            if self.queued:
                time.sleep(0.05)
        dropped = 0
        for queue in self.queues:
            while queue:
                _, lost = queue.popleft()
                self._dropped(1, lost)
                dropped += 1
        self.c["pool_queued"] = 0
        if dropped:
            log.warning("pool did not take %d frame(s) before the end; dropped and counted", dropped)
        return dropped

    def _dropped(self, frames: int, events: int) -> None:
        self.c["pool_dropped_frames"] += frames
        self.c["pool_dropped_events"] += events

    def close(self) -> None:
        for sock, monitor in zip(self.socks, self.monitors, strict=True):
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=UPLINK_LINGER_MS)
