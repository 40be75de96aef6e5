"""Replays give the same flow events, in the same order, however the records are split across
decoders and however the decoders' frames interleave."""

from __future__ import annotations

import json
import random
import zlib

import pcap
import pytest

from services.decoder.fastpath import decode_batch
from services.flowtracker.merge import CaptureOrderMerge
from services.flowtracker.table import FlowTable
from shared.config import FlowSettings
from tests.conftest import BENCH_PCAP
from tests.flowtracker_helpers import dns_answer, numbered, tcp_session

PACKETS = 30_000
TICK_EVERY = 1024
BATCH = 64
SETTINGS = dict(update_interval=5.0, tcp_idle=20.0, udp_idle=10.0, icmp_idle=5.0, tcp_handshake_idle=5.0)


def corpus_records() -> list[tuple]:
    """Real records from the start of the bench capture, plus DNS-named and SNI-named sessions."""
    try:
        from services.decoder.app.inspector import AppInspector

        app = AppInspector()
    except ImportError:
        app = None
    packets = []
    for num, (ts, data) in enumerate(pcap.pcap(str(BENCH_PCAP)), 1):
        packets.append((num, ts, 1, len(data), bytes(data)))
        if num >= PACKETS:
            break
    records = []
    for i in range(0, len(packets), 256):
        records += decode_batch(packets[i : i + 256], app).records
    t0 = records[len(records) // 2][1]
    client, resolver = "192.168.9.9", "192.168.9.1"
    extra = []
    for i in range(40):  # a DNS answer on one shard names a flow that is likely on another
        server = f"203.0.113.{i + 1}"
        extra.append(
            dns_answer(
                t0 + i,
                client,
                resolver,
                f"q{i}.example",
                [(f"q{i}.example", "CNAME", 5, f"c{i}.cdn"), (f"c{i}.cdn", "A", 5, server)],
                cport=30000 + i,
            )
        )
        app_fields = {"tls.sni": f"sni{i}.example"} if i % 3 == 0 else None
        extra += tcp_session(t0 + i + 0.001, client, server, 40000 + i, 443, app=app_fields)
    merged = sorted(records + extra, key=lambda r: r[1])
    return numbered(merged)


def shard(rec: tuple, n: int) -> int:
    a, b = sorted(((rec[4], rec[6]), (rec[5], rec[7])))
    return zlib.crc32(b"%d|%b|%d|%b|%d" % (rec[3], a[0], a[1], b[0], b[1])) % n


def sender_streams(records: list[tuple], n: int) -> list[list[tuple]]:
    """Per decoder, its frames in order: ("recs", batch) and capture's ("tick", (num, ts)), then ("eos", ...)."""
    batches: list[list] = [[] for _ in range(n)]
    streams: list[list] = [[] for _ in range(n)]
    for i, rec in enumerate(records, 1):
        d = shard(rec, n)
        batches[d].append(rec)
        if len(batches[d]) >= BATCH:
            streams[d].append(("recs", batches[d]))
            batches[d] = []
        if i % TICK_EVERY == 0:
            for d2 in range(n):
                if batches[d2]:
                    streams[d2].append(("recs", batches[d2]))
                    batches[d2] = []
                streams[d2].append(("tick", (rec[0], rec[1])))
    for d in range(n):
        if batches[d]:
            streams[d].append(("recs", batches[d]))
        streams[d].append(("eos", None))
    return streams


def replay(streams: list[list], order: str, seed: int = 0) -> list[dict]:
    """Feed the frames the way the service does, in an interleaving that keeps per-sender order."""
    table = FlowTable(FlowSettings(**SETTINGS))
    merge = CaptureOrderMerge(len(streams))
    pos = [0] * len(streams)
    rng = random.Random(seed)
    events: list[dict] = []
    while True:
        live = [d for d in range(len(streams)) if pos[d] < len(streams[d])]
        if not live:
            break
        if order == "sequential":
            d = live[0]
        elif order == "reverse":
            d = live[-1]
        else:
            d = rng.choice(live)
        kind, body = streams[d][pos[d]]
        pos[d] += 1
        sender = f"decoder-{d}"
        if kind == "recs":
            merge.add(sender, body)
        elif kind == "tick":
            merge.tick(sender, *body)
        else:
            merge.finish(sender)
        table.add(merge.release())
        if merge.all_finished:
            break
        table.advance(merge.watermark)
        events += table.take()
    table.finish("eos", merge.highest)
    return events + table.take()


def canonical(events: list[dict]) -> list[str]:
    """Every event, flow ids included, in the order it left the table."""
    return [json.dumps(e, sort_keys=True) for e in events]


@pytest.fixture(scope="module")
def records():
    return corpus_records()


def test_same_events_with_1_and_3_decoders_in_any_interleaving(records):
    reference = canonical(replay(sender_streams(records, 1), "random"))
    ends = [json.loads(e) for e in reference if '"ev": "end"' in e]
    assert len(ends) > 500
    assert {e["reason"] for e in ends} >= {"idle", "fin", "eos"}
    assert sum(1 for e in reference if '"ev": "update"' in e) > 100
    named = {e["sport"]: e for e in ends if e["dst"].startswith("203.0.113.")}
    assert named[40001]["name"] == "q1.example" and named[40001]["name_src"] == "dns"
    assert named[40003]["name"] == "sni3.example" and named[40003]["name_src"] == "tls.sni"
    three = sender_streams(records, 3)
    assert all(len(s) > 10 for s in three)
    for order, seed in (("random", 1), ("random", 2), ("sequential", 0), ("reverse", 0)):
        assert canonical(replay(three, order, seed)) == reference, (order, seed)


def test_events_leave_in_packet_time_order(records):
    """What the detector gets is in packet-time order, whatever the interleaving: an idle end
    found late must not follow events that come after it in time."""
    for n, order, seed in ((1, "random", 0), (3, "random", 3), (4, "reverse", 0)):
        events = replay(sender_streams(records, n), order, seed)
        times = [e["ts"] for e in events if e["reason"] != "eos"]
        assert times == sorted(times), (n, order, seed)
