"""The compiled hot modules (Cython twins, scripts/build_compiled.py) and the pure-Python reference
give identical output on every corpus capture and the bench capture: capture's shard and batch of
every packet, the decoders' records, every flow event, every alert and the flow log; and `pktscope read`'s JSON line of every packet and the packets a
set of display filters selects.

The whole corpus runs once per path, in two processes side by side (tests/compiled_outputs.py),
one with PKTSCOPE_PURE=1. scripts/test runs scripts/setup first, which builds the twins, so a
missing or stale build fails here rather than passing by comparing pure Python with itself;
with PKTSCOPE_PURE=1 in the environment (no compiled path wanted) the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import compiled
from tests.conftest import start_redis

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(compiled.forced_pure(), reason="PKTSCOPE_PURE=1: no compiled path to compare")


def test_corpus_identical_compiled_and_pure(tmp_path):
    proc, url = start_redis(tmp_path)
    try:
        procs = {}
        for name, pure in (("compiled", "0"), ("pure", "1")):
            env = {**os.environ, "PKTSCOPE_PURE": pure}
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.compiled_outputs", url, name, str(tmp_path / f"{name}.json")],
                cwd=ROOT,
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, p in procs.items():
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, (name, err[-3000:])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    got = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}
    assert got["compiled"]["all_compiled"], f"not compiled: {got['compiled']['hot_path']} (run scripts/setup)"
    assert not got["pure"]["all_compiled"] and "PKTSCOPE_PURE" in got["pure"]["hot_path"]
    a, b = got["compiled"]["captures"], got["pure"]["captures"]
    assert a.keys() == b.keys() and len(a) >= 40
    for capture in a:
        assert a[capture] == b[capture], capture
    # the comparison covered real traffic: the bench capture alone has 183k packets, 30k+ events
    assert sum(c["records"] for c in a.values()) > 180_000
    assert sum(c["events"] for c in a.values()) > 30_000
    assert sum(c["alerts"] for c in a.values()) > 1_000
    # and `pktscope read`'s dissection and display filters: every packet, each filter selecting some
    assert sum(c["read_packets"] for c in a.values()) > 180_000
    selected = [sum(int(c["read_matches"][i].split(":")[0]) for c in a.values()) for i in range(30)]
    assert sum(1 for n in selected if n) >= 25, selected


def test_a_twin_built_from_other_source_is_not_used(tmp_path):
    """An edited module whose twin was not rebuilt runs as pure Python instead of stale code."""
    if not compiled.all_compiled():
        pytest.skip("no compiled build")
    edited = tmp_path / "fastpath.py"
    edited.write_bytes(Path(ROOT / "services/decoder/fastpath.py").read_bytes() + b"\n# edited\n")
    status = dict(compiled.STATUS)
    try:
        assert compiled.twin("services.decoder.fastpath", str(edited)) is None
        assert compiled.STATUS["services.decoder.fastpath"] == "pure (stale build)"
        assert (
            compiled.twin("services.decoder.fastpath", str(ROOT / "services/decoder/fastpath.py")) is not None
        )
    finally:
        compiled.STATUS.update(status)
