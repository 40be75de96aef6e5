"""`pktscope connections` after a replay: per (entity, destination label) figures that add up to
the flow log's, host entities (no process attribution offline), and the CLI's bad input."""

from __future__ import annotations

import json
from collections import defaultdict

from services.cli.supervisor import render_config
from services.flowtracker.flowlog import read_flow_log
from shared.config import PipelineConfig
from tests.conftest import BENCH_PCAP
from tests.pipeline_helpers import pktscope, tcp_session, write_pcap


def test_connections_add_up_to_the_flow_log_and_entities_are_hosts(short_tmp):
    t0 = 1_700_000_000.0
    packets = tcp_session("192.168.7.10", "93.184.216.34", 40001, 443, t0, payload=b"a" * 300)
    packets += tcp_session("192.168.7.10", "93.184.216.34", 40002, 443, t0 + 1, payload=b"b" * 500)
    packets += tcp_session("192.168.7.11", "93.184.216.35", 40003, 80, t0 + 2)
    capture = write_pcap(short_tmp / "c.pcap", packets)
    run_dir, flow_log = short_tmp / "run", short_tmp / "flows.jsonl"
    pktscope("run", "--read", str(capture), "--run-dir", str(run_dir), "--state-dir", str(short_tmp / "st"),
             "--learning", "0", "--flow-log", str(flow_log), "--json")  # fmt: skip
    out = pktscope("connections", "--json", "--run-dir", str(run_dir))
    rows = {(r["process"], r["destination"]): r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {("host:192.168.7.10", "93.184.216.34"), ("host:192.168.7.11", "93.184.216.35")}
    flows = read_flow_log(flow_log)
    assert all("process" not in f for f in flows)  # replays: no process facts, hosts only
    want: dict = defaultdict(lambda: [0, 0, 0])
    for f in flows:
        w = want[("host:" + f["src"], f["dst"])]
        w[0] += 1
        w[1] += f["bytes_out"]
        w[2] += f["bytes_in"]
    for key, (n, b_out, b_in) in want.items():
        assert (rows[key]["flows"], rows[key]["bytes_out"], rows[key]["bytes_in"]) == (n, b_out, b_in)
    assert rows[("host:192.168.7.10", "93.184.216.34")]["first"] == t0
    only = pktscope("connections", "--process", "host:192.168.7.11", "--json", "--run-dir", str(run_dir))
    assert [json.loads(x)["process"] for x in only.stdout.splitlines()] == ["host:192.168.7.11"]
    since = pktscope("connections", "--since", "2023-11-01", "--json", "--run-dir", str(run_dir))
    assert len(since.stdout.splitlines()) == 2
    later = pktscope("connections", "--since", "2031-01-01", "--json", "--run-dir", str(run_dir))
    assert later.stdout.strip() == ""
    status = pktscope("status", "--all-runs", "--run-dir", str(run_dir)).stdout
    assert "attribution: off (offline replay" in status
    bad = pktscope("connections", "--since", "yesterday-ish", "--run-dir", str(run_dir), check=False)
    assert bad.returncode != 0 and "write a duration" in bad.stderr


def test_bench_capture_connections_bytes_equal_outbound_flow_bytes(short_tmp):
    run_dir, flow_log = short_tmp / "run", short_tmp / "flows.jsonl"
    pktscope("run", "--read", str(BENCH_PCAP), "--run-dir", str(run_dir), "--state-dir", str(short_tmp / "st"),
             "--learning", "0", "--flow-log", str(flow_log), "--decoders", "2", "--json", timeout=600)  # fmt: skip
    rows = [json.loads(x) for x in pktscope("connections", "--json", "--run-dir", str(run_dir)).stdout.splitlines()]
    outbound = [f for f in read_flow_log(flow_log) if f["outbound"]]
    assert sum(r["flows"] for r in rows) == len(outbound)
    assert sum(r["bytes_out"] for r in rows) == sum(f["bytes_out"] for f in outbound)
    assert sum(r["bytes_in"] for r in rows) == sum(f["bytes_in"] for f in outbound)


def test_procwatch_runs_only_for_live_runs_that_attribute():
    live = PipelineConfig(run_dir="/tmp/x", interface="lo")
    assert "[program:procwatch]" in render_config(live, python="python3")
    live.detector.attribution = "psutil"
    assert "[program:procwatch]" not in render_config(live, python="python3")
    replay = PipelineConfig(run_dir="/tmp/x", read_path="/tmp/c.pcap")
    assert "[program:procwatch]" not in render_config(replay, python="python3")
