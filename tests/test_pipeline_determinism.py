"""The same alerts however the pipeline is scaled: decoders 1-4, batch sizes 1-512.

The scenario (tests/scenario_captures.py) has one host whose flows all go to decoder 0 and,
after the learning window, a 40 MB upload followed by 12 minutes of packet time in which
every other decoder's shard is idle. Events released ahead of the idle shards' time would
put the spike's bytes into a later interval (or none), and the alerts would differ.
"""

from __future__ import annotations

import json

import pytest

from tests.pipeline_helpers import pktscope, read_summary, stream_order
from tests.scenario_captures import SPIKER, geo_dbs, volume_spike_capture

LEARNING = "1800"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    d = tmp_path_factory.mktemp("spike")
    capture = volume_spike_capture(d / "spike.pcap")
    country, asn = geo_dbs(d)
    return capture, country, asn


def replay(tmp, name: str, capture, *extra: str, state: str | None = None) -> tuple[dict, list[dict]]:
    run_dir = tmp / f"run-{name}"
    proc = pktscope(
        "run",
        "--read",
        str(capture),
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(tmp / f"state-{state or name}"),
        "--json",
        *extra,
        timeout=300,
    )
    summary = read_summary(proc)
    listed = pktscope("alerts", "list", "--json", "--count", "100000", "--run-dir", str(run_dir))
    alerts = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    alerts.sort(key=lambda a: stream_order(a["id"]))
    return summary, alerts


def essence(alerts: list[dict]) -> list[tuple]:
    """What a person is told, order-free: the stream order of alerts raised by one frame's events
    may follow how the events were framed, never what they say."""
    return sorted(
        (a["kind"], a["entity"], a["title"], a["ts"], json.dumps(a["detail"], sort_keys=True)) for a in alerts
    )


def test_alerts_identical_for_any_decoder_count_and_batch_size(scenario, short_tmp):
    capture, country, asn = scenario
    geo = ("--geoip-country-db", str(country), "--geoip-asn-db", str(asn), "--learning", LEARNING)
    runs = {}
    for decoders in (1, 2, 3, 4):
        runs[f"d{decoders}"] = replay(short_tmp, f"d{decoders}", capture, "--decoders", str(decoders), *geo)
    for batch in (1, 64, 512):
        runs[f"b{batch}"] = replay(
            short_tmp, f"b{batch}", capture, "--decoders", "2", "--batch-size", str(batch), *geo
        )
    reference = essence(runs["d1"][1])
    spikes = [a for a in runs["d1"][1] if a["kind"] == "volume_spike"]
    assert len(spikes) == 1 and spikes[0]["entity"] == f"host:{SPIKER}"
    assert spikes[0]["severity"] == "critical" and spikes[0]["detail"]["bytes"] > 40_000_000
    for name, (summary, alerts) in runs.items():
        assert essence(alerts) == reference, name
        assert summary["late_events"] == 0, name
        assert summary["drops"]["detector_frames_lost"] == 0, name


def test_second_replay_into_the_same_state_raises_nothing_new(scenario, short_tmp):
    capture, country, asn = scenario
    geo = ("--geoip-country-db", str(country), "--geoip-asn-db", str(asn), "--learning", LEARNING)
    first, alerts1 = replay(short_tmp, "once", capture, "--decoders", "2", *geo, state="shared")
    assert any(a["kind"] == "volume_spike" for a in alerts1)
    second, alerts2 = replay(short_tmp, "twice", capture, "--decoders", "2", *geo, state="shared")
    assert [a["id"] for a in alerts2] == [a["id"] for a in alerts1]  # the same stream, nothing added
    assert second["alerts"] == 0


def test_flowtracker_killed_mid_replay_finishes_and_reports_late_events(short_tmp):
    """kill -9 of the flow-tracker during a replay: supervisord restarts it, the replay ends (no
    hang waiting for an end of stream), and the detector's late-event count is reported. The
    restarted tracker's events start at or after what its predecessor released, so none should
    be late; any that were would be counted, never moved to another interval."""
    from shared.config import PipelineConfig
    from shared.redis_conn import connect
    from shared.redis_keys import Keys
    from tests.conftest import BENCH_PCAP
    from tests.pipeline_helpers import kill_service, start_pktscope, wait_for

    run_dir = short_tmp / "run-kill"
    log = short_tmp / "kill.log"
    proc = start_pktscope(
        "run",
        "--read",
        str(BENCH_PCAP),
        "--decoders",
        "2",
        "--learning",
        "0",
        "--batch-size",
        "64",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(short_tmp / "state-kill"),
        "--json",
        log=log,
    )
    try:
        wait_for(lambda: (run_dir / "pipeline.json").exists(), 30, what="pipeline.json")
        cfg = PipelineConfig.load(run_dir / "pipeline.json")
        keys = Keys(cfg.redis_prefix)

        def tracker_busy():
            try:
                r = connect(cfg.effective_redis_url)
                return int(r.hget(keys.stats("flowtracker"), "records_in") or 0) > 0
            except Exception:
                return False

        wait_for(tracker_busy, 60, interval=0.01, what="the flow-tracker to get records")
        kill_service(run_dir, "flowtracker")
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(log.read_text().strip().splitlines()[-1])
    assert "exited: flowtracker (terminated by SIGKILL" in (run_dir / "supervisord.log").read_text()
    assert summary["packets"] == 183_388
    assert summary["late_events"] == 0
    listed = pktscope("alerts", "list", "--json", "--count", "100000", "--run-dir", str(run_dir))
    alerts = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    keys_seen = [
        (a["kind"], a["entity"], a["destination"], a["detail"].get("label", ""), a["detail"].get("new", ""))
        for a in alerts
    ]
    assert len(keys_seen) == len(set(keys_seen))  # the restart raised nothing twice
