"""Display filters against tshark, the oracle: the same frame numbers on every corpus capture.

Every filter of tests/filter_conformance_list.py runs over every capture of
../shared/corpus/pcaps and sv-merged.pcap, in pktscope (in-process, each capture decoded once)
and in tshark (one Lua-driven run per capture, cached: tests/tshark_oracle.py). A pair is
identical when both keep exactly the same frames. The per-filter agreement is printed and
written to .cache/filter-conformance.txt; every filter that differs anywhere must be explained
in docs/filters.md ("Differences from tshark").
"""

from __future__ import annotations

import re

import filter_conformance as fc
import tshark_oracle
from conftest import ROOT
from filter_conformance_list import FILTERS

DOCS = ROOT / "docs" / "filters.md"


def test_at_least_150_filters_over_every_field_family_and_operator():
    assert len(FILTERS) >= 150 and len(set(FILTERS)) == len(FILTERS)
    text = " ".join(FILTERS)
    for op in ("==", "!=", "===", "!==", " < ", " > ", "<=", ">=", " & ", "contains", "matches", " ~ ",
               " in {", "..", "len(", "[0:3]", " and ", " or ", "!", " not ", " gt ", " ne "):
        assert op in text, op


def test_pktscope_keeps_the_frames_tshark_keeps():
    assert tshark_oracle.available(), "tshark is missing: run scripts/setup"
    results = fc.compare(fc.corpus_captures(), FILTERS)
    rejected = {f for f, per in results.items() for _p, t in per.values() if isinstance(t, str)}
    assert not rejected, f"tshark rejects these filters: {sorted(rejected)}"
    same, total, text = fc.report(results)
    out = tshark_oracle.cache_dir().parent / "filter-conformance.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print("\n" + text.split("\n", 1)[0] + f" (per filter: {out})")
    for line in text.splitlines()[1:]:
        if not line.startswith(" "):
            print(line)
    assert same / total >= 0.99, text[:20000]
    section = DOCS.read_text().split("## Differences from tshark", 1)
    assert len(section) == 2, "docs/filters.md has no 'Differences from tshark' section"
    documented = {m.replace("\\|", "|") for m in re.findall(r"`([^`]+)`", section[1])}
    differing = {f for f, per in results.items() if any(p != t for p, t in per.values())}
    assert not differing - documented, f"differences not explained in docs/filters.md: {sorted(differing - documented)}"
