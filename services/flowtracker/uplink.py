"""A sensor's link to the detector pool: never blocks the sensor, loses nothing quietly.

On a sensor (``pktscope run --role sensor``) the flow-trackers send their frames over TCP (CURVE)
to the pool's detector shards. A pool that is slow, restarting or unreachable must not stall
capture, so a frame that ZeroMQ will not take at once (``IMMEDIATE``: nothing is queued on a
connection that is not up, so what waits is here and counted) waits in a bounded local queue
per shard; once that is full the oldest frame is dropped and its events are counted
(``pool_dropped_frames``, ``pool_dropped_events``). The pool sees the gap in the sequence
numbers as ``frames_lost`` too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from pathlib import Path

import zmq

from shared.curve import curve_client

log = logging.getLogger(__name__)

UPLINK_LINGER_MS = 2000  # what ZeroMQ still holds on a live connection at close


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
        self.socks: list[zmq.Socket] = []
        for endpoint in endpoints:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.LINGER, UPLINK_LINGER_MS)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if keys_dir:
                curve_client(sock, Path(keys_dir), client)
            sock.connect(endpoint)
            self.socks.append(sock)
        self.queues: list[deque[tuple[bytes, int]]] = [deque() for _ in endpoints]
        for name in ("pool_queued", "pool_dropped_frames", "pool_dropped_events"):
            self.c[name] += 0

    def send(self, shard: int, buf: bytes, events: int = 0) -> None:
        """Send ``buf`` (carrying ``events`` flow events) to ``shard`` now, or queue it, or drop the oldest."""
        queue = self.queues[shard]
        if queue:
            self._pump(shard)
        if not queue:
            try:
                self.socks[shard].send(buf, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
        if len(queue) >= self.max_queued:
            _, lost = queue.popleft()
            self._dropped(1, lost)
        queue.append((buf, events))
        self.c["pool_queued"] = self.queued

    def pump(self) -> None:
        """Hand ZeroMQ what waits here, as far as the pool takes it (called when idle)."""
        for shard in range(len(self.socks)):
            if self.queues[shard]:
                self._pump(shard)
        self.c["pool_queued"] = self.queued

    def _pump(self, shard: int) -> None:
        queue, sock = self.queues[shard], self.socks[shard]
        while queue:
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
        first = not self.c["pool_dropped_frames"]
        self.c["pool_dropped_frames"] += frames
        self.c["pool_dropped_events"] += events
        if first:
            log.warning("pool unreachable or behind: local queue full, dropping (counted in pool_dropped_*)")

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=UPLINK_LINGER_MS)
