"""Digests of everything the in-process pipeline produces on the whole corpus, for comparing the
compiled hot modules with the pure-Python reference (tests/test_compiled_identical.py).

    python -m tests.compiled_outputs REDIS_URL PREFIX OUT.json

runs every corpus capture and the bench capture through tests/inprocess_pipeline.py with two
decoders and writes, per capture, the count and SHA-256 of: capture's frames to each decoder
(shards and batches), the decoders' record frames, every flow-event row, and the alerts and flow
log; and what `pktscope read` makes of it (every packet's JSON line and the packets a set of
display filters select). Run once with PKTSCOPE_PURE=1 and once without: one process per path, not per capture.
"""

from __future__ import annotations

import hashlib
import json
import sys

import redis

from scripts.bench_filters import FILTERS as BENCH_FILTERS
from services.capture.sources import OfflineSource
from services.cli.decode_file import app_inspector, decoded_packets
from services.cli.filter import compile_filter
from services.cli.text import json_line
from services.cli.wireshark_view import public
from shared import compiled
from tests import inprocess_pipeline
from tests.conftest import BENCH_PCAP, PCAPS
from tests.filter_conformance_list import FILTERS as CONFORMANCE_FILTERS
from tests.test_pipeline_differential import essence

# the bench's filters and every 8th of the tshark conformance list (each operator kind appears)
READ_FILTERS = [*BENCH_FILTERS, *CONFORMANCE_FILTERS[::8]]
CAPTURES = [*sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng")), BENCH_PCAP]


def digest(obj: object) -> str:
    """repr is exact for what these hold (tuples, lists, dicts, bytes, ints, floats, str, None)."""
    return hashlib.sha256(repr(obj).encode()).hexdigest()


def read_outputs(path: str, filters: list) -> dict:
    """What `pktscope read` makes of a capture: every packet's JSON line, and each filter's match
    per packet (the dissection, Wireshark view and display-filter twins)."""
    lines = hashlib.sha256()
    matches = [bytearray() for _ in filters]
    packets = 0
    source = OfflineSource(path)
    for fields, _l4, _app in decoded_packets(source, app_inspector()):
        packets += 1
        for i, match in enumerate(filters):
            matches[i].append(1 if match(fields) else 0)
        lines.update(json_line(public(fields)).encode())
    return {
        "read_packets": packets,
        "read_error": source.error,
        "read_sha": lines.hexdigest(),
        "read_matches": [f"{sum(m)}:{hashlib.sha256(m).hexdigest()}" for m in matches],
    }


def outputs(url: str, prefix: str) -> dict:
    r = redis.Redis.from_url(url, decode_responses=True)
    out: dict = {"hot_path": compiled.summary(), "all_compiled": compiled.all_compiled(), "captures": {}}
    filters = [compile_filter(f) for f in READ_FILTERS]
    for i, path in enumerate(CAPTURES):
        res = inprocess_pipeline.run(str(path), r, f"{prefix}-{i}", decoders=2, seed=3, keep=True)
        records = [body for frames in res.frames_out for kind, body in frames if kind == "recs"]
        alerts, flows = essence(res)
        out["captures"][str(path)] = {
            "frames_in": [sum(len(b) for k, b in f if k == "pkts") for f in res.frames_in],
            "frames_in_sha": digest(res.frames_in),
            "records": sum(len(b) for b in records),
            "records_sha": digest(res.frames_out),
            "events": len(res.rows),
            "events_sha": digest(res.rows),
            "alerts": len(alerts),
            "alerts_sha": digest(alerts),
            "flow_log_sha": digest(flows),
            **read_outputs(str(path), filters),
        }
    r.close()
    return out


if __name__ == "__main__":
    url, prefix, dest = sys.argv[1:4]
    with open(dest, "w") as fh:
        json.dump(outputs(url, prefix), fh, indent=1, sort_keys=True)
