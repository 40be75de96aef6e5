"""The detector's side of the live view and the EVE log: hand them to the observer service.

Building the live view and EVE lines costs CPU per flow (0.12 and 0.27 CPU s for
sv-merged.pcap's 10,943 flows, measured in-process), which in the detector would slow every
replay by 10-20%. So the detector only forwards: per FLOWS frame, the frame's bytes as it
received them, plus what it alone knows of the frame's outbound flows (entity, process, GeoIP;
sent once per flow, again when it changes) and the alerts raised, as one three-part message on a
PUSH socket to the observer (services/observer/), which does the rest on the other core.

Offline the send waits while the observer is behind (nothing is lost, as between the other
stages), up to 5 s: an observer that is absent (a detector run on its own) or stuck does not
stop the detector; live it never waits. A message the observer cannot take is dropped and
counted (``observer_dropped``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import zmq

from services.detector.engine import DetectorEngine
from services.detector.live_store import _DPORT, _DST, _PROTO, _SPORT, _SRC, process_facts
from shared.config import PipelineConfig
from shared.sockets import connect_push

EOS_MARK = b"eos"
OFFLINE_WAIT_MS = 5000
MAX_SENT = 200_000  # flows whose facts were sent (forgotten beyond: sent again, harmless)


def observer_endpoint(cfg: PipelineConfig) -> str:
    return f"ipc://{Path(cfg.run_dir) / 'observer.ipc'}"


def _flow_key(raw: Any) -> tuple | None:
    if type(raw) is tuple and len(raw) > _DPORT:
        return (raw[_PROTO], raw[_SRC], raw[_SPORT], raw[_DST], raw[_DPORT])
    if isinstance(raw, dict):
        return (raw.get("proto"), raw.get("src"), raw.get("sport"), raw.get("dst"), raw.get("dport"))
    return None


class Observers:
    def __init__(self, cfg: PipelineConfig, engine: DetectorEngine, counters: Counter[str], ctx: zmq.Context):
        self.engine = engine
        self.c = counters
        self.live = cfg.live
        # IMMEDIATE: nothing is queued for an observer that is not there (a detector run alone,
        # or one whose observer is restarting), so the detector never waits on an absent one
        self.push = connect_push(ctx, observer_endpoint(cfg), cfg.hwm, immediate=True)
        self.sent: dict[tuple, tuple] = {}
        self.absent = False  # the last offline send found no observer: later ones do not wait
        engine.observed = []

    def frame(self, buf: bytes | None, raised: list[dict]) -> None:
        """After each FLOWS frame (``buf``), tick or finish: forward what the observer needs."""
        observed = self.engine.observed
        facts = []
        if observed:
            sent = self.sent
            for raw, flow in observed:
                if flow is None:
                    continue
                key = _flow_key(raw)
                sig = (flow.entity, flow.cc, flow.asn)
                if key is None or sent.get(key) == sig:
                    continue
                if len(sent) >= MAX_SENT:
                    sent.clear()
                sent[key] = sig
                facts.append(
                    [*key, flow.entity, flow.cc, flow.asn, flow.org, process_facts(flow.proc) or None]
                )
            observed.clear()
        for alert in raised:
            self.c[f"alerts.{alert.get('kind', '')}"] += 1  # alerts by kind, for the exporter
        if buf is None and not facts and not raised:
            return
        self._send([buf or b"", msgpack.packb(facts), msgpack.packb(raised, default=str)])

    def end(self) -> None:
        """The detector's end of stream: the observer writes everything out and finishes."""
        self._send([b"", b"\x90", b"\x90", EOS_MARK])

    def _send(self, parts: list[bytes]) -> None:
        push = self.push
        # offline: wait while the observer is behind (backpressure, nothing lost), but give up
        # on one that does not take anything for OFFLINE_WAIT_MS (gone or stuck)
        if not self.live and not self.absent and not push.poll(OFFLINE_WAIT_MS, zmq.POLLOUT):
            self.absent = True
        try:
            push.send_multipart(parts, flags=zmq.NOBLOCK)
            self.absent = False
        except zmq.Again:
            self.c["observer_dropped"] += 1

    def close(self) -> None:
        self.push.close(linger=10_000 if not self.live else 1000)
