"""`pktscope baseline` as a real subprocess against a real Redis filled by the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_detector_engine import AFTER, T0, flow_event, kinds, make_cfg

from services.detector.engine import DetectorEngine

ROOT = Path(__file__).resolve().parent.parent


def baseline(redis_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.baseline",
            args[0],
            "--redis-url",
            redis_url,
            "--redis-prefix",
            "t",
            *args[1:],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def learned(rdb):
    """A baseline: two hosts, a few destinations, some volume, learned in packet time."""
    eng = DetectorEngine(rdb, make_cfg())
    eng.process([flow_event(ts=T0, name="learned.example", out=1000)])
    eng.process([flow_event(ts=T0 + 61, name="second.example.org", out=2000)])
    eng.process([flow_event(ts=T0 + 122, src="10.0.0.6", name="ok.example.net")])
    rdb.sadd("t:ent:{host:10.0.0.6}:dest", "evil\x1b[2J.example.net")  # e.g. a crafted AS name
    return eng


def test_show_lists_entities_and_escapes_names(redis_url, learned):
    out = baseline(redis_url, "show").stdout
    assert "host:10.0.0.5" in out and "host:10.0.0.6" in out
    assert "learned.example" in out and "example.org" in out
    assert "\x1b" not in out and "\\x1b" in out
    assert "volume: 2 intervals" in out
    data = json.loads(baseline(redis_url, "show", "host:10.0.0.5", "--json").stdout)
    (ent,) = data["entities"]
    assert ent["entity"] == "host:10.0.0.5"
    assert ent["dest"] == ["example.org", "learned.example"]
    assert float(ent["info"]["first_seen"]) == T0
    assert data["learning"]["start"] == T0
    # the same through the `pktscope` entry point
    main = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "baseline",
            "show",
            "--json",
            "--redis-url",
            redis_url,
            "--redis-prefix",
            "t",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert {e["entity"] for e in json.loads(main.stdout)["entities"]} == {"host:10.0.0.5", "host:10.0.0.6"}
    missing = baseline(redis_url, "show", "host:10.99.0.1", check=False)
    assert missing.returncode == 2 and "no baseline" in missing.stderr


def test_allow_silences_a_destination(redis_url, rdb, learned):
    baseline(redis_url, "allow", "host:10.0.0.5", "newly-allowed.com")
    assert learned.process([flow_event(ts=AFTER, name="www.newly-allowed.com")]) == []
    raised = learned.process([flow_event(ts=AFTER + 1, name="not-allowed.com")])
    assert kinds(raised) == ["new_process_dest"]
    usage = baseline(redis_url, "allow", "host:10.0.0.5", check=False)
    assert usage.returncode == 2 and "LABEL" in usage.stderr


def test_reset_one_entity_or_everything(redis_url, rdb, learned):
    baseline(redis_url, "reset", "host:10.0.0.6")
    assert rdb.zrange("t:entities", 0, -1) == ["host:10.0.0.5"]
    assert not rdb.exists("t:ent:{host:10.0.0.6}:dest")
    baseline(redis_url, "reset")
    assert not rdb.keys("t:ent:*") and not rdb.exists("t:entities", "t:learning")
    # learning starts again with the next event, for the running engine too
    learned.maintenance()
    assert learned.process([flow_event(ts=AFTER, src="10.0.0.77", name="x.example")]) == []
    assert float(rdb.hget("t:learning", "start")) == AFTER


def test_export_then_import_restores_the_baseline(redis_url, rdb, learned, tmp_path):
    path = tmp_path / "baseline.json"
    baseline(redis_url, "export", str(path))
    exported = json.loads(path.read_text())
    assert exported["format"] == "pktscope-baseline"
    assert set(exported["entities"]) == {"host:10.0.0.5", "host:10.0.0.6"}
    before = json.loads(baseline(redis_url, "show", "--json").stdout)
    baseline(redis_url, "reset")
    assert "imported 2 entities" in baseline(redis_url, "import", str(path)).stdout
    after = json.loads(baseline(redis_url, "show", "--json").stdout)
    for ent in before["entities"]:  # the open (unfinished) volume interval is not exported
        for field in ("cur_start", "cur_bytes"):
            ent["volume"].pop(field, None)
    assert after == before
    # a fresh engine on the imported baseline: learning is over, known things stay silent
    eng = DetectorEngine(rdb, make_cfg())
    assert eng.process([flow_event(ts=AFTER, name="learned.example")]) == []
    assert kinds(eng.process([flow_event(ts=AFTER, src="10.0.0.88", name="learned.example")])) == [
        "new_process_egress",
        "new_process_dest",
    ]


def test_import_rejects_bad_files(redis_url, tmp_path):
    bad = tmp_path / "bad.json"
    for content in (
        "not json",
        json.dumps({"format": "other"}),
        json.dumps({"format": "pktscope-baseline", "version": 1, "entities": {"e": {"dest": "not-a-list"}}}),
    ):
        bad.write_text(content)
        proc = baseline(redis_url, "import", str(bad), check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("pktscope: ")
