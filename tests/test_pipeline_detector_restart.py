"""The detector killed (-9) in the middle of a replay, under the real supervisord.

supervisord restarts it and the replay finishes. What must hold (issue 4, acceptance point 4):
the alerts already raised stay in the stream, none is raised twice, and the flow events that
were in flight show as a gap in the flow-tracker's frame sequence numbers, counted as the
detector's ``frames_lost`` in ``pktscope status``.

To make the loss certain rather than likely, the detector is first frozen (SIGSTOP, a hung
detector) and killed only once the flow-tracker has sent it frames it will never read. The
flow-tracker is held (SIGSTOP) while the detector restarts, so that it cannot reach its end of
stream meanwhile: it gives a detector that is not there only 2 s (its socket linger) before it
drops what it still holds, the end-of-stream frame included, and the replay would never end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from services.detector.keys import DetectorKeys
from shared.config import PipelineConfig
from shared.redis_conn import connect
from tests.conftest import BENCH_PCAP
from tests.pipeline_helpers import (
    pktscope,
    read_summary,
    service_pid,
    start_pktscope,
    stop_pktscope,
    tcp_session,
    wait_for,
    write_pcap,
)

FROZEN_AFTER_FRAMES = 3  # of the flow-tracker's ~150 frames: well before the replay ends
GAP_LINE = re.compile(r"frames (\d+)\.\.(\d+) from flowtracker never arrived \((\d+) lost\)")


def _redis(cfg: PipelineConfig):
    try:
        r = connect(cfg.effective_redis_url)
        r.ping()
        return r
    except Exception:  # not up yet
        return None


def _queued_bytes(pid: int, endpoint: str) -> int:
    """Bytes waiting in the kernel for ``pid``'s connections on an ipc endpoint (`ss`, Recv-Q).

    They were sent after the process stopped reading: killing it loses them for certain.
    """
    if shutil.which("ss") is None:  # iproute2 missing: the caller has another way to tell
        return 0
    path = endpoint.removeprefix("ipc://")
    out = subprocess.run(["ss", "-x", "-n", "-p", "-H"], capture_output=True, text=True, check=True).stdout
    queued = 0
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[1] == "ESTAB" and cols[4] == path and f"pid={pid}," in line:
            queued += int(cols[2])
    return queued


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _dedup_key(alert: dict) -> tuple:
    """What the detector de-duplicates an alert on (docs/redis.md, "de-duplication key")."""
    d = alert["detail"]
    kind, entity = alert["kind"], alert["entity"]
    if kind == "new_process_dest":
        return kind, entity, d["label"]
    if kind == "new_geo":
        return kind, entity, d.get("new"), d.get("country"), d.get("asn")
    if kind == "identity_change":
        return kind, entity, d["new_identity"]
    if kind == "volume_spike":  # once per entity per cooldown: tell its intervals apart
        return kind, entity, d["interval_start"]
    if kind == "cleartext_credential":
        return kind, entity, d["protocol"], d["user"], alert["destination"]
    return kind, entity


def _status_json(run_dir: Path) -> dict:
    return json.loads(pktscope("status", "--json", "--run-dir", str(run_dir)).stdout)["services"]


@pytest.mark.slow
def test_detector_killed_mid_replay_keeps_alerts_repeats_none_and_counts_the_lost_frames(short_tmp):
    run_dir = short_tmp / "run"
    log = short_tmp / "pktscope.log"
    proc = start_pktscope(
        "run",
        "--read",
        str(BENCH_PCAP),
        "--decoders",
        "1",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(short_tmp / "state"),
        "--learning",
        "0",
        "--json",
        "--timeout",
        "240",
        log=log,
    )
    tracker_pid = 0
    try:
        wait_for(lambda: (run_dir / "pipeline.json").exists(), 30, what="pipeline.json")
        cfg = PipelineConfig.load(run_dir / "pipeline.json")
        keys = DetectorKeys(cfg.redis_prefix)
        r = wait_for(lambda: _redis(cfg), 30, what="the private redis")

        def processed() -> int:  # last flow-tracker frame the detector has acted on (written per frame)
            return int(r.hget(keys.receiver_seq("detector"), "flowtracker") or -1)

        wait_for(
            lambda: processed() >= FROZEN_AFTER_FRAMES and r.xlen(keys.alerts()) > 0,
            120,
            interval=0.005,
            what="the detector to raise its first alerts",
        )
        # the services' own pids (their stats): under the fork launcher supervisord's pid is the
        # client standing in for the service, which a SIGSTOP or `ss -p` would not reach
        old_pid = int(r.hget(keys.stats("detector"), "pid"))
        tracker_pid = int(r.hget(keys.stats("flowtracker"), "pid"))
        old_client = service_pid(run_dir, "detector")
        os.kill(old_pid, signal.SIGSTOP)
        wait_for(lambda: _stopped(old_pid), 10, what="the detector to stop")

        def sent_beyond_processed() -> bool:
            """A frame after the last one processed left the flow-tracker: the kill loses it."""
            if _queued_bytes(old_pid, cfg.detector_endpoint) > 0:
                return True
            return int(r.hget(keys.stats("flowtracker"), "frames_out") or 0) > processed() + 1

        wait_for(sent_beyond_processed, 60, what="flow frames sent to the frozen detector")
        last_processed = processed()  # frozen: a round trip sent before the stop is done by now
        os.kill(tracker_pid, signal.SIGSTOP)
        wait_for(lambda: _stopped(tracker_pid), 10, what="the flow-tracker to stop")
        assert processed() == last_processed
        assert not r.hget(keys.stats("flowtracker"), "eos"), "the flow-tracker finished before the kill"
        raised_before = {entry_id for entry_id, _ in r.xrange(keys.alerts())}
        os.kill(old_pid, signal.SIGKILL)
        wait_for(
            lambda: service_pid(run_dir, "detector") not in (0, old_client),
            30,
            what="supervisord's restart",
        )
        new_pid = wait_for(
            lambda: int(r.hget(keys.stats("detector"), "pid") or old_pid) != old_pid
            and int(r.hget(keys.stats("detector"), "pid")),
            30,
            what="the restarted detector to listen and report",
        )
        os.kill(tracker_pid, signal.SIGCONT)
        assert proc.wait(timeout=300) == 3, log.read_text()[-3000:]  # frames lost: "incomplete"
    finally:
        if tracker_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tracker_pid, signal.SIGCONT)  # never leave a frozen process behind
        stop_pktscope(proc)

    summary = json.loads(log.read_text().strip().splitlines()[-1])
    assert summary["packets"] == 183_388
    assert summary["restarts"] == {"detector": 1}
    assert summary["outcome"] == "incomplete" and summary["lost"]["frames"] > 0
    assert "pktscope: incomplete: lost" in log.read_text()

    # The stream: everything raised before the kill is still there, nothing is there twice.
    listed = pktscope("alerts", "list", "--json", "--run-dir", str(run_dir))
    alerts = [json.loads(line) for line in listed.stdout.splitlines()]
    ids = [a["id"] for a in alerts]
    assert len(ids) == len(set(ids))
    assert raised_before and raised_before <= set(ids)
    assert len(ids) > len(raised_before), "the restarted detector raised nothing"
    dedup = [_dedup_key(a) for a in alerts]
    repeated = {k for k in dedup if dedup.count(k) > 1}
    assert not repeated, f"raised twice: {sorted(repeated)[:5]}"

    # The loss: exactly the frames after the last one processed, up to the first one the
    # restarted detector got, as its log says and as its counter says.
    services = _status_json(run_dir)
    det, ft = services["detector"], services["flowtracker"]
    gaps = GAP_LINE.findall((run_dir / "logs" / "detector.log").read_text())
    assert len(gaps) == 1, gaps
    first, last, lost = map(int, gaps[0])
    assert first == last_processed + 1
    assert lost == last - first + 1 == det["frames_lost"] > 0
    assert last < ft["frames_out"] - 1  # the end of stream (last frame) did arrive
    assert det["eos"] == 1 and det["restarts"] == 1 and det["pid"] == new_pid
    assert summary["drops"]["detector_frames_lost"] == lost
    # the restarted detector counted on from its predecessor's last report
    assert 0 < det["alerts"] <= len(alerts)
    assert summary["alerts"] == len(alerts)  # the summary counts the stream, not a counter
    assert ft["frames_lost"] == 0  # nothing else was lost

    # `pktscope status` shows it in the detector's own "frames lost" column.
    table = pktscope("status", "--run-dir", str(run_dir)).stdout.splitlines()
    heading = table[0]
    column = heading.index("frames lost") + len("frames lost")  # right-aligned under its heading
    row = next(line for line in table if line.startswith("detector "))
    assert row[:column].split()[-1] == f"{lost:,}"
    assert "detector: restarted 1 time(s)" in pktscope("status", "--run-dir", str(run_dir)).stdout


@pytest.mark.slow
def test_a_second_replay_on_the_same_state_is_not_ended_by_the_first_ones_end_of_stream(short_tmp):
    """The detector's stats hash outlives a run (the state is saved): the old ``eos`` must not
    end the next run at its start, nor the old counters leak into it (no restart in between)."""
    t0 = 1_700_000_000.0
    packets = tcp_session("192.168.7.10", "93.184.216.34", 40001, 443, t0)
    packets += tcp_session("192.168.7.11", "93.184.216.35", 40002, 443, t0 + 1)
    small = write_pcap(short_tmp / "two.pcap", packets)
    flags = ["--decoders", "1", "--run-dir", str(short_tmp / "run"), "--state-dir", str(short_tmp / "state")]
    first = read_summary(pktscope("run", "--read", str(small), *flags, "--learning", "0", "--json"))
    assert first["packets"] == len(packets)
    assert first["alerts"] == 4  # two first egresses, two new destinations
    # long enough (~2 s) that a run ended by the stale eos would be caught doing so
    second = read_summary(pktscope("run", "--read", str(BENCH_PCAP), *flags, "--learning", "0", "--json"))
    assert second["packets"] == second["decoded"] + second["malformed"] == 183_388
    assert second["flow_events"] > 30_000
    assert second["restarts"] == {}
    listed = pktscope("alerts", "list", "--json", "--run-dir", str(short_tmp / "run"))
    assert len(listed.stdout.splitlines()) == first["alerts"] + second["alerts"] > 4
