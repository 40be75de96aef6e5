"""Every input the coverage-guided fuzzer (scripts/fuzz.py) ever crashed on, replayed for good.

A finding is kept as a file under tests/fuzz_regressions/<target>/; the fuzz targets are plain
functions, so this runs without atheris.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.fuzz import TARGETS

CASES = Path(__file__).resolve().parent / "fuzz_regressions"
FILES = sorted(p for p in CASES.rglob("*") if p.is_file())


def test_every_target_has_a_directory_of_findings_or_none_yet():
    assert {p.parent.name for p in FILES} <= set(TARGETS)
    assert FILES  # at least the decoder's SYN+RST finding


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_finding_stays_fixed(path: Path):
    one_input = TARGETS[path.parent.name]()
    one_input(path.read_bytes())  # raises FuzzFinding (or anything) if the bug is back
