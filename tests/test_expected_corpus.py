"""Acceptance: every value the reference IDS reported for the corpus captures, `pktscope read --json` finds.

Each line of shared/corpus/expected.jsonl names a capture, a field (dotted path) and a value;
some packet of that capture must carry the value in that field (lists walked: any element).
`dns.name` / `dns.type` look in both queries and answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

from conftest import CORPUS, ROOT

EXPECTED = CORPUS / "expected.jsonl"
FIELD_PATHS = {
    "dns.name": ("dns.queries.name", "dns.answers.name"),
    "dns.type": ("dns.queries.type", "dns.answers.type"),
}


def _walk(node: object, keys: list[str], out: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, keys, out)
        return
    if not keys:
        if isinstance(node, dict) and "value" in node:
            node = node["value"]
        out.add(str(node))
        return
    if isinstance(node, dict) and keys[0] in node:
        _walk(node[keys[0]], keys[1:], out)


def values_in_capture(pcap: str, fields: set[str]) -> tuple[dict[str, set[str]], str]:
    """Every value of each wanted field over all packets of one capture (and read's stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.read", str(CORPUS / pcap), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found: dict[str, set[str]] = {f: set() for f in fields}
    for line in proc.stdout.splitlines():
        pkt = json.loads(line)
        for field in fields:
            for path in FIELD_PATHS.get(field, (field,)):
                _walk(pkt, path.split("."), found[field])
    return found, proc.stderr if proc.returncode else ""


def test_expected_values_are_decoded():
    lines = [json.loads(line) for line in EXPECTED.read_text().splitlines() if line.strip()]
    by_pcap: dict[str, set[str]] = defaultdict(set)
    for exp in lines:
        by_pcap[exp["pcap"]].add(exp["field"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(
            zip(by_pcap, pool.map(lambda p: values_in_capture(p, by_pcap[p]), by_pcap), strict=True)
        )

    passed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    failures = []
    for exp in lines:
        field = exp["field"]
        total[field] += 1
        found, _ = results[exp["pcap"]]
        if str(exp["value"]) in found[field]:
            passed[field] += 1
        else:
            failures.append(exp)

    print("\nexpected.jsonl pass rate per field:")
    for field in sorted(total):
        print(
            f"  {field:<18} {passed[field]:>4}/{total[field]:<4} {100 * passed[field] / total[field]:6.1f}%"
        )
    overall = sum(passed.values()) / len(lines)
    print(f"  {'overall':<18} {sum(passed.values()):>4}/{len(lines):<4} {100 * overall:6.1f}%")
    errors = {p: err for p, (_, err) in results.items() if err}
    for pcap, err in list(errors.items())[:10]:
        print(f"read failed on {pcap}: {err.strip()[-300:]}")
    for exp in failures[:40]:
        print(f"MISSING {exp['pcap']} {exp['field']} = {str(exp['value'])[:120]!r}")

    strict = [f for f in total if f.startswith(("tls.", "quic."))]
    for field in strict:
        assert passed[field] == total[field], f"{field}: {passed[field]}/{total[field]} (must be all)"
    assert overall >= 0.99, f"overall pass rate {overall:.1%} < 99%"
