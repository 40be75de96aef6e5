"""The pipeline's stages in one process, for differential tests over a whole corpus.

Starting the five processes costs ~2 s per run; comparing 1, 2 and 3 decoders over 50
captures that way would take many minutes. Here the same stage code runs in-process: capture's
sharder, batching and TICKs; one AppInspector and the decoder service's batch call per decoder; the
flow-tracker's CaptureOrderMerge and FlowTable with the service's release rule; the detector's
engine on a real Redis. The decoders' frames reach the tracker in a seeded random
interleaving (each decoder's own frames in order), as ZeroMQ's fair queueing may deliver them.
The process-level equivalence is checked separately by the pipeline tests.

``keep=True`` also returns every frame each decoder got and sent and every flow-event row:
tests/compiled_outputs.py digests them to compare the compiled and pure-Python paths.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import redis

from services.capture.service import TICK_EVERY_PACKETS
from services.capture.sharding import make_sharder
from services.capture.sources import OfflineSource
from services.decoder import packed_batch
from services.decoder.app.inspector import AppInspector
from services.decoder.fastpath import decode_batch
from services.decoder.packed_batch import decode_packed
from services.detector.engine import DetectorEngine
from services.detector.enrichment import Enrichers
from services.flowtracker import packed_records
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.merge import CaptureOrderMerge
from services.flowtracker.service import DETECTOR_TICK_EVERY
from services.flowtracker.table import FlowTable
from shared.config import PipelineConfig
from shared.flowevents import EV_END, from_row
from shared.frames import FrameType, decode, encode
from shared.packed import packets_body, packets_of, records_body, records_of


@dataclass
class Result:
    alerts: list[dict] = field(default_factory=list)
    flow_log: list[dict] = field(default_factory=list)
    events: int = 0
    late_events: int = 0
    # with keep=True: per decoder, what it got and sent (frames), and every flow-event row
    frames_in: list[list[tuple]] = field(default_factory=list)
    frames_out: list[list[tuple]] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)


def capture_frames(path: str, decoders: int, batch_size: int) -> list[list[tuple]]:
    """Per decoder, what capture sends it in order: ("pkts", batch) and ("tick", (num, ts))."""
    source = OfflineSource(path)
    shard = make_sharder(source.linktype, decoders)
    lt = source.linktype
    batches: list[list] = [[] for _ in range(decoders)]
    out: list[list[tuple]] = [[] for _ in range(decoders)]
    num, ts, next_tick = 0, 0.0, TICK_EVERY_PACKETS

    def flush(i: int) -> None:
        if batches[i]:
            out[i].append(("pkts", batches[i]))
            batches[i] = []

    for ts, data in source:
        num += 1  # noqa: SIM113 - as capture counts
        i = shard(data)
        batches[i].append((num, ts, lt, len(data), data))
        if len(batches[i]) >= batch_size:
            flush(i)
        if num >= next_tick:
            next_tick = num + TICK_EVERY_PACKETS
            for j in range(decoders):
                flush(j)
                out[j].append(("tick", (num, ts)))
    for j in range(decoders):
        flush(j)
        out[j].append(("eos", None))
    return out


def run(
    path: str,
    r: redis.Redis,
    prefix: str,
    decoders: int = 1,
    batch_size: int = 512,
    seed: int = 0,
    learning: float = 0.0,
    local_nets: list[str] | None = None,
    keep: bool = False,
) -> Result:
    cfg = PipelineConfig(redis_prefix=prefix, decoders=decoders, run_id=prefix)
    cfg.detector.learning = learning
    cfg.detector.attribute_processes = False
    if local_nets is not None:
        cfg.local_nets = local_nets
    # decoders: each turns its packet frames into record frames, in order
    inputs = capture_frames(path, decoders, batch_size)
    decoded: list[list[tuple]] = []
    wire_bodies: list[list] = [[] for _ in range(decoders)]  # each decoder's RECORDS bodies, as received
    for frames in inputs:
        app = AppInspector()
        own = []
        for kind, body in frames:
            if kind == "pkts":
                # through the services' body codecs (packed when compiled) and frames, as on the
                # sockets: each stage sees what msgpack gives back (tuples for lists)
                wire = decode(encode(FrameType.PACKETS, "capture", 0, packets_body(body))).body
                if packed_batch.COMPILED and type(wire) is bytes:  # as DecoderService._packed_packets
                    out = decode_packed(wire, app).body
                else:
                    out = records_body(decode_batch(packets_of(wire), app).records)
                frame = encode(FrameType.RECORDS, "decoder", 0, out)
                received = decode(frame).body
                own.append(("recs", records_of(received)))
                wire_bodies[len(decoded)].append(received)
            else:
                own.append((kind, body))
        decoded.append(own)
    # flow-tracker and detector
    merge = CaptureOrderMerge(decoders)
    table = FlowTable(cfg.flow, LocalMatcher(cfg.local_nets))
    engine = DetectorEngine(r, cfg, enrichers=Enrichers())
    result = Result()
    if keep:
        result.frames_in, result.frames_out = inputs, decoded
    tick_sent = -math.inf

    def to_detector(rows: list) -> None:
        if rows:
            result.flow_log += [from_row(row) for row in rows if row[0] == EV_END]
            result.events += len(rows)
            if keep:
                result.rows += rows
            result.alerts += engine.process(rows)

    rng = random.Random(seed)
    pos = [0] * decoders
    recs_taken = [0] * decoders
    by_reference = packed_records.COMPILED  # as FlowTrackerService.by_reference with one tracker
    while not merge.all_finished:
        live = [d for d in range(decoders) if pos[d] < len(decoded[d])]
        d = rng.choice(live)
        kind, body = decoded[d][pos[d]]
        pos[d] += 1
        sender = f"decoder-{d}"
        if kind == "recs":
            # as FlowTrackerService.handle: packed bodies as references when that twin runs
            wire = wire_bodies[d][recs_taken[d]]
            recs_taken[d] += 1
            merge.add(sender, packed_records.refs_of(wire) if by_reference and type(wire) is bytes else body)
        elif kind == "tick":
            merge.tick(sender, *body)
        else:
            merge.finish(sender)
        records = merge.release()
        if records:
            if by_reference:
                packed_records.add_records(table, records)
            else:
                table.add(records)
        if merge.all_finished:
            break
        table.advance(merge.watermark)
        rows = table.take_rows()
        to_detector(rows)
        if rows:
            tick_sent = max(tick_sent, rows[-1][2])
        elif table.horizon >= tick_sent + DETECTOR_TICK_EVERY:
            tick_sent = table.horizon
            result.alerts += engine.tick(table.horizon)
    table.finish("eos", merge.highest if merge.highest > -math.inf else 0.0)
    to_detector(table.take_rows())
    result.alerts += engine.finish()
    result.late_events = engine.c["late_events"]
    return result
