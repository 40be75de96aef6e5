"""Honest lifecycle (issue 10): one run per run directory, Ctrl-C and `pktscope stop` say
"interrupted", a killed `pktscope run` takes its pipeline with it, and the summary's alert count
is the stream's. Real processes, real supervisord and redis-server, real signals."""

from __future__ import annotations

import json
import os
import signal

import pytest

from services.cli.supervisor import Supervisor
from tests.conftest import LONG_PACKETS
from tests.fault_helpers import Replay, gone
from tests.pipeline_helpers import pktscope, read_summary, start_pktscope, tcp_session, wait_for, write_pcap


@pytest.mark.slow
def test_second_run_refused_at_once_and_stop_interrupts_the_first(short_tmp, long_capture):
    first = Replay(short_tmp, long_capture)
    try:
        first.wait_packets(4096)
        small = write_pcap(short_tmp / "small.pcap", tcp_session("10.0.0.1", "192.0.2.9", 40000, 443, 1e9))
        second = pktscope(
            "run", "--read", str(small), "--run-dir", str(first.run_dir), "--json", check=False, timeout=60
        )
        assert second.returncode == 2
        assert f"another pktscope run (pid {first.proc.pid}) is using {first.run_dir}" in second.stderr
        assert "pktscope stop" in second.stderr
        assert "Traceback" not in second.stderr and second.stdout == ""
        assert first.proc.poll() is None, "the refused run disturbed the first one"

        stop = pktscope("stop", "--run-dir", str(first.run_dir), timeout=90)
        assert f"pid {first.proc.pid}" in stop.stdout
        assert first.proc.wait(timeout=30) == 130
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    summary = first.summary()
    assert summary["outcome"] == "interrupted"
    assert 0 < summary["packets"] < LONG_PACKETS
    assert not (first.run_dir / "supervisord.pid").exists() or gone(
        int((first.run_dir / "supervisord.pid").read_text())
    )
    # nothing is left running there: a stop now finds nothing
    assert pktscope("stop", "--run-dir", str(first.run_dir), check=False).returncode == 1


@pytest.mark.slow
def test_ctrl_c_during_a_replay_says_interrupted_with_the_counts_and_exits_130(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture)
    replay.wait_packets(4096)
    replay.proc.send_signal(signal.SIGINT)
    assert replay.proc.wait(timeout=60) == 130
    summary = replay.summary()
    assert summary["outcome"] == "interrupted"
    assert 4096 <= summary["packets"] < LONG_PACKETS, replay.output()
    assert summary["decoded"] + summary["malformed"] <= summary["packets"]


def test_interrupted_text_summary(short_tmp, long_capture):
    """The text form says "interrupted" on its first line, with the packets counted so far."""
    run_dir = short_tmp / "run"
    log = short_tmp / "out.log"
    proc = start_pktscope(
        "run",
        "--read",
        str(long_capture),
        "--decoders",
        "1",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(short_tmp / "state"),
        log=log,
    )
    try:
        wait_for(lambda: (run_dir / "pipeline.json").exists(), 30, what="pipeline.json")
        wait_for(lambda: "capture" in _services(run_dir), 60, what="capture to report")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"pktscope: {long_capture}: interrupted" in text
    assert "packets" in text and "captured" in text


def _services(run_dir) -> set[str]:
    out = pktscope("status", "--json", "--run-dir", str(run_dir), check=False)
    if out.returncode:
        return set()
    return set(json.loads(out.stdout)["services"])


@pytest.mark.slow
def test_kill_9_of_pktscope_run_takes_supervisord_redis_and_services_with_it(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture)
    replay.wait_packets(4096)
    sup_pid = int((replay.run_dir / "supervisord.pid").read_text())
    children = [i["pid"] for i in Supervisor(replay.run_dir).rpc.getAllProcessInfo() if i["pid"]]
    assert len(children) >= 4  # redis, capture, decoder, flow-tracker, detector
    os.kill(replay.proc.pid, signal.SIGKILL)
    replay.proc.wait(timeout=10)
    for pid in (sup_pid, *children):
        wait_for(lambda pid=pid: gone(pid), 30, what=f"pid {pid} to exit")
    # the run directory is free again: a new run there works
    small = write_pcap(short_tmp / "small.pcap", tcp_session("10.0.0.1", "192.0.2.9", 40000, 443, 1e9))
    again = pktscope(
        "run",
        "--read",
        str(small),
        "--run-dir",
        str(replay.run_dir),
        "--state-dir",
        str(short_tmp / "state"),
        "--learning",
        "0",
        "--json",
    )
    assert read_summary(again)["packets"] == len(tcp_session("10.0.0.1", "192.0.2.9", 40000, 443, 1e9))


def test_summary_alert_count_is_the_alert_streams_and_final_stats_precede_eos(short_tmp):
    packets = []
    for i in range(30):
        packets += tcp_session("10.0.0.1", f"198.51.{i}.7", 40000 + i, 443, 1e9 + i)
    capture = write_pcap(short_tmp / "many.pcap", packets)
    proc = pktscope(
        "run",
        "--read",
        str(capture),
        "--decoders",
        "2",
        "--run-dir",
        str(short_tmp / "run"),
        "--state-dir",
        str(short_tmp / "state"),
        "--learning",
        "0",
        "--json",
    )
    summary = read_summary(proc)
    assert summary["outcome"] == "done"
    listed = pktscope("alerts", "list", "--json", "--run-dir", str(short_tmp / "run"))
    assert summary["alerts"] == len(listed.stdout.splitlines()) == 31  # first egress + 30 destinations
    # every decoder's final figures were in Redis before the run ended
    assert sum(d["packets_in"] for d in summary["per_decoder"].values()) == len(packets)
    assert summary["decoded"] == len(packets)
