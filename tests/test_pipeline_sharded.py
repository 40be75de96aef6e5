"""Every stage sharded: the same alerts and flow log as the default pipeline (issue 15, point 1)."""

from __future__ import annotations

import json

import pytest

from tests.pipeline_helpers import pktscope, replay_outputs


@pytest.mark.slow
def test_sharded_trackers_and_detectors_give_the_default_runs_alerts_and_flows(short_tmp):
    default, alerts1, flows1 = replay_outputs(short_tmp, "default", "--decoders", "1")
    sharded, alerts2, flows2 = replay_outputs(
        short_tmp, "sharded", "--decoders", "2", "--flowtrackers", "2", "--detectors", "2"
    )
    assert default["alerts"] == sharded["alerts"] > 900
    assert alerts1 == alerts2
    assert len(flows1) == default["flows"] > 10_000
    assert flows1 == flows2
    assert sharded["late_events"] == 0
    status = json.loads(pktscope("status", "--json", "--run-dir", str(short_tmp / "run-sharded")).stdout)
    assert {"flowtracker-0", "flowtracker-1", "detector-0", "detector-1", "decoder-0", "decoder-1"} <= set(
        status["services"]
    )
    per_tracker = [status["services"][f"flowtracker-{j}"]["flows_started"] for j in (0, 1)]
    assert all(n > 1000 for n in per_tracker) and sum(per_tracker) == sharded["flows"]
