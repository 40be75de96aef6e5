"""Redis faults survived (issue 10): paused, restarted, killed -9. Real redis-server, real signals.

What must hold: every service and `pktscope run` wait and retry, the replay finishes with the same
alerts as a clean one (nothing decided twice: the decision scripts are idempotent), the outage
shows in the summary and in `pktscope status`, and the private Redis never comes back empty.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from services.cli.supervisor import Supervisor
from shared.redis_conn import connect
from shared.redis_server import start_redis_server
from tests.conftest import LONG_PACKETS
from tests.fault_helpers import Replay
from tests.pipeline_helpers import pktscope, read_summary

PAUSE = 6.0  # seconds Redis stays stopped


def _clean_alerts(tmp, capture, url: str) -> int:
    proc = pktscope(
        "run", "--read", str(capture), "--decoders", "1", "--run-dir", str(tmp / "clean"),
        "--redis-url", url, "--redis-prefix", "clean", "--learning", "0", "--json", timeout=600,
    )  # fmt: skip
    return read_summary(proc)["alerts"]


def _alert_keys(url: str, prefix: str) -> list[tuple]:
    """What each alert is about, order-free: the same set twice means nothing lost or doubled."""
    r = connect(url)
    out = []
    for _id, fields in r.xrange(f"{prefix}:alerts"):
        a = json.loads(fields["alert"])
        out.append((a["kind"], a["entity"], a["destination"], json.dumps(a["detail"].get("new"))))
    return sorted(out)


@pytest.fixture
def external_redis(short_tmp):
    data = short_tmp / "ext"
    data.mkdir()
    proc, url = start_redis_server(data / "redis.sock", data, aof=True)
    holder = {"proc": proc}
    yield holder, url, data
    holder["proc"].send_signal(signal.SIGCONT)
    holder["proc"].terminate()
    holder["proc"].wait(timeout=10)


@pytest.mark.slow
def test_external_redis_paused_mid_replay_is_waited_out_and_reported(short_tmp, long_capture, external_redis):
    holder, url, _data = external_redis
    replay = Replay(short_tmp, long_capture, "--redis-url", url, "--redis-prefix", "paused")
    replay.wait_packets(100_000)
    holder["proc"].send_signal(signal.SIGSTOP)
    time.sleep(PAUSE)
    holder["proc"].send_signal(signal.SIGCONT)
    assert replay.proc.wait(timeout=600) == 0, replay.output()[-3000:]
    out = replay.output()
    assert "Traceback" not in out
    summary = replay.summary()
    assert summary["packets"] == LONG_PACKETS
    assert summary["redis_outages"], "the outage went unreported"
    assert max(o["longest_s"] for o in summary["redis_outages"].values()) >= PAUSE - 1.5
    assert summary["alerts"] == len(_alert_keys(url, "paused"))
    status = pktscope("status", "--run-dir", str(replay.run_dir)).stdout
    assert "redis outages seen:" in status
    # the same alerts as a clean run: nothing lost, nothing decided twice
    assert _alert_keys(url, "paused") == _alert_keys_after_clean(short_tmp, long_capture, url)


def _alert_keys_after_clean(tmp, capture, url) -> list[tuple]:
    _clean_alerts(tmp, capture, url)
    return _alert_keys(url, "clean")


@pytest.mark.slow
def test_external_redis_restarted_mid_replay_loses_and_repeats_nothing(short_tmp, long_capture, external_redis):
    holder, url, data = external_redis
    replay = Replay(short_tmp, long_capture, "--redis-url", url, "--redis-prefix", "restarted")
    replay.wait_packets(100_000)
    holder["proc"].terminate()  # a clean restart: it writes what it has, then comes back
    holder["proc"].wait(timeout=30)
    time.sleep(2.0)
    holder["proc"], _ = start_redis_server(data / "redis.sock", data, aof=True)
    assert replay.proc.wait(timeout=600) == 0, replay.output()[-3000:]
    assert "Traceback" not in replay.output()
    summary = replay.summary()
    assert summary["packets"] == LONG_PACKETS
    assert summary["redis_outages"]
    assert _alert_keys(url, "restarted") == _alert_keys_after_clean(short_tmp, long_capture, url)


@pytest.mark.slow
def test_private_redis_killed_mid_replay_comes_back_with_its_data(short_tmp, long_capture):
    replay = Replay(short_tmp, long_capture)
    r = replay.redis()
    replay.wait_packets(150_000)
    before = {entry_id for entry_id, _ in r.xrange(f"{replay.cfg.redis_prefix}:alerts")}
    entities = r.zcard(f"{replay.cfg.redis_prefix}:entities")
    assert before and entities
    # capture held still while the AOF catches up, so that the replay cannot end before the kill
    capture = int(r.hget(f"{replay.cfg.redis_prefix}:stats:capture", "pid"))
    os.kill(capture, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # appendfsync everysec: what is older than a second is on disk
        pid = Supervisor(replay.run_dir).rpc.getProcessInfo("redis:redis")["pid"]
        os.kill(pid, signal.SIGKILL)
    finally:
        os.kill(capture, signal.SIGCONT)
    assert replay.proc.wait(timeout=600) == 0, replay.output()[-3000:]
    assert "Traceback" not in replay.output()
    summary = replay.summary()
    assert summary["packets"] == LONG_PACKETS
    listed = pktscope("alerts", "list", "--json", "--run-dir", str(replay.run_dir)).stdout.splitlines()
    after = {json.loads(line)["id"] for line in listed}
    assert before <= after, "alerts written before the kill are gone"
    assert summary["alerts"] >= len(before)
    assert (short_tmp / "state" / "pktscope-aof" / "pktscope.aof.manifest").exists()
    shown = pktscope("baseline", "show", "--json", "--run-dir", str(replay.run_dir)).stdout
    assert len(json.loads(shown)["entities"]) >= entities
