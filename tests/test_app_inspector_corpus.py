"""AppInspector against the reference IDS: every dns/http/tls/quic line of expected.jsonl.

Each capture is read with pypcap, decoded by the decoder's own fast path (decode_batch) with a
fresh AppInspector, and every application field value of every record is collected. A line
passes when its field has its value somewhere in that capture. Prints the pass rate per field;
fails below 99% for dns.* and http.* lines together, and on any missed tls.*/quic.* line (those
values come from tls.py/quic.py, reached through this dispatcher's reassembly).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pcap
import pytest

from services.decoder.app import AppInspector
from services.decoder.fastpath import decode_batch
from tests.conftest import CORPUS

EXPECTED = CORPUS / "expected.jsonl"
REQUIRED_RATE = 0.99
DNS_HTTP = ("dns.", "http.")
TLS_QUIC = ("tls.", "quic.")
_RECORD_KEYS = ("dns.answers", "dns.authorities", "dns.additionals")


def read_packets(path):
    """Packet tuples (num, ts, linktype, wirelen, data) as capture would send them."""
    handle = pcap.pcap(str(path), timeout_ms=0)
    linktype = handle.datalink()
    return [(i, ts, linktype, len(buf), bytes(buf)) for i, (ts, buf) in enumerate(handle, 1)]


def add_values(fields: dict, seen: dict[str, set]) -> None:
    """Collect comparable (field, value) pairs from one app dict, including its "more" list."""
    for key, value in fields.items():
        if key == "more":
            for extra in value:
                add_values(extra, seen)
        elif key == "dns.queries":
            for name, rtype in value:
                seen["dns.name"].add(name)
                seen["dns.type"].add(rtype)
        elif key in _RECORD_KEYS:
            for name, rtype, _ttl, _data in value:
                seen["dns.name"].add(name)
                seen["dns.type"].add(rtype)
        elif isinstance(value, (str, int, bool)):
            seen[key].add(str(value) if not isinstance(value, str) else value)


def app_values(path) -> dict[str, set]:
    inspector = AppInspector()
    result = decode_batch(read_packets(path), inspector)
    assert result.app_errors == 0, f"exceptions escaped AppInspector on {path}"
    seen: dict[str, set] = defaultdict(set)
    for rec in result.records:
        if rec[-1]:
            add_values(rec[-1], seen)
    return seen


def load_expected(prefixes: tuple[str, ...]) -> dict[str, list[dict]]:
    by_pcap: dict[str, list[dict]] = defaultdict(list)
    with EXPECTED.open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["field"].startswith(prefixes):
                by_pcap[row["pcap"]].append(row)
    return by_pcap


def corpus_results(prefixes: tuple[str, ...]) -> tuple[Counter, Counter, list]:
    passed: Counter = Counter()
    total: Counter = Counter()
    failures = []
    for pcap_rel, rows in sorted(load_expected(prefixes).items()):
        seen = app_values(CORPUS / pcap_rel)
        for row in rows:
            field = row["field"]
            total[field] += 1
            if str(row["value"]) in seen.get(field, ()):
                passed[field] += 1
            else:
                failures.append((pcap_rel, field, row["value"]))
    return passed, total, failures


def report(passed: Counter, total: Counter, failures: list) -> float:
    for field in sorted(total):
        print(f"{field:20s} {passed[field]:4d}/{total[field]:4d} {passed[field] / total[field]:7.2%}")
    for failure in failures:
        print("FAIL", *failure)
    rate = sum(passed.values()) / sum(total.values())
    print(f"overall {sum(passed.values())}/{sum(total.values())} {rate:.2%}")
    return rate


@pytest.mark.slow
def test_dns_and_http_fields_match_reference():
    assert report(*corpus_results(DNS_HTTP)) >= REQUIRED_RATE


@pytest.mark.slow
def test_tls_and_quic_fields_reach_their_parsers():
    passed, total, failures = corpus_results(TLS_QUIC)
    report(passed, total, failures)
    assert not failures
