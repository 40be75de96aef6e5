"""The parts of the sensor role (issue 15), each with the real thing underneath: the pool's
merge of sensors, entities with the sensor's name, the uplink's bounded queue over real
ZeroMQ CURVE sockets, sensors' stats in a real Redis, and `pktscope run`'s role flags."""

from __future__ import annotations

import contextlib
import math
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

from services.detector import alerts, sensor_entity, sensor_stats
from services.detector.pool_link import bind_pool_pull
from services.detector.pool_merge import PoolMerge
from services.flowtracker.uplink import Uplink
from shared.curve import create_keys
from tests.conftest import PCAPS, ROOT

PKTSCOPE = [sys.executable, "-m", "services.cli.main"]


def row(ts: float, src: str, dst: str = "93.184.216.34") -> list:
    """A flow-event row (shared/flowevents.py FIELDS order) of an outbound TCP flow."""
    return ["start", 1, ts, 6, 4, src, 40000, dst, 443, True, ts, ts, 1, 60, 0, 0, 1, 60, 0, 0, "SYN_SENT",
            "", "", {}, None, None, 0, 0]  # fmt: skip


class Clock:
    """A wall clock the test moves (the merge's silence is wall time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pool_merge_orders_sensors_by_packet_time_and_a_silent_sensor_holds_back_only_so_long():
    clock = Clock()
    merge = PoolMerge(silence=10.0, clock=clock)
    merge.add("a/flowtracker", [row(1.0, "10.0.0.1"), row(5.0, "10.0.0.1")])
    merge.add("b/flowtracker", [row(2.0, "10.0.0.2")])
    merge.tick("b/flowtracker", 3.0)
    pairs = merge.release_pairs()  # b has passed 3.0, a 5.0: what is before 3.0 goes, in time order
    assert [(r[2], s) for r, s in pairs] == [(1.0, "a/flowtracker"), (2.0, "b/flowtracker")]
    assert merge.release_pairs() == []  # a's event at 5.0 waits for b
    clock.now += 9.0
    assert merge.release_pairs() == [] and merge.stalled == 0
    clock.now += 2.0  # b silent for 11 s (a too, but a is heard again now)
    merge.tick("a/flowtracker", 6.0)
    pairs = merge.release_pairs()
    assert [(r[2], s) for r, s in pairs] == [(5.0, "a/flowtracker")]
    assert merge.stalled == 1  # counted once per silence
    merge.release_pairs()
    assert merge.stalled == 1
    merge.tick("b/flowtracker", 7.0)  # b is back: it bounds the merge again
    merge.add("a/flowtracker", [row(8.0, "10.0.0.1")])
    assert merge.release_pairs() == []
    merge.finish("b/flowtracker")  # b ended: only a bounds, and a has passed 8.0 with its own event
    merge.tick("a/flowtracker", 9.0)
    assert [(r[2], s) for r, s in merge.release_pairs()] == [(8.0, "a/flowtracker")]
    assert merge.ended == 1 and not merge.all_finished and merge.bound() == 9.0


def test_pool_merge_releases_what_waits_when_every_sensor_is_silent():
    clock = Clock()
    merge = PoolMerge(silence=5.0, clock=clock)
    merge.add("a/flowtracker", [row(1.0, "10.0.0.1")])
    merge.add("b/flowtracker", [row(2.0, "10.0.0.2")])
    assert merge.release_pairs() == []  # a may have more at 1.0: nothing has been passed by both
    clock.now += 6.0
    assert merge.bound() == math.inf
    assert [(r[2], s) for r, s in merge.release_pairs()] == [(1.0, "a/flowtracker"), (2.0, "b/flowtracker")]
    assert merge.stalled == 2


def test_entities_carry_the_sensor_and_titles_say_where():
    assert sensor_entity.qualify("/usr/bin/curl", "web-1") == "/usr/bin/curl@web-1"
    assert sensor_entity.qualify("/usr/bin/curl", "") == "/usr/bin/curl"
    assert sensor_entity.split("host:10.0.0.5@web-1") == ("host:10.0.0.5", "web-1")
    assert sensor_entity.split("/opt/a@b/curl") == ("/opt/a@b/curl", "")  # an '@' in a path is no sensor
    assert alerts.display_name("/usr/bin/curl@web-1") == "curl on web-1"
    assert alerts.display_name("host:10.0.0.5@db.example") == "host 10.0.0.5 on db.example"
    assert alerts.display_name("/usr/bin/curl") == "curl"
    assert not sensor_entity.valid_sensor_name("bad/name") and not sensor_entity.valid_sensor_name("")


def _received(
    sock: zmq.Socket, want: int, timeout: float = 60.0, uplink: Uplink | None = None
) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        if uplink is not None:
            uplink.pump()
        if sock.poll(100):
            got.append(sock.recv())
    return got


def _free_port_below_the_ephemeral_range() -> int:
    """A free port the kernel never hands out as a source port: a connect retried to a port
    nobody listens on may otherwise connect to itself (TCP simultaneous open)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(20000, min(low, 32000)), 200):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise AssertionError("no free port")


def test_uplink_queues_a_bounded_amount_while_the_pool_is_away_then_delivers_over_curve(tmp_path):
    keys = tmp_path / "keys"
    create_keys(keys, "s1")
    ctx = zmq.Context()
    port = _free_port_below_the_ephemeral_range()
    counters: Counter = Counter()
    uplink = Uplink(ctx, [f"tcp://127.0.0.1:{port}"], 10, str(keys), "s1", 3, counters)
    try:
        for i in range(5):  # nobody listens: 3 wait here, the 2 oldest are dropped and counted
            uplink.send(0, b"frame-%d" % i, events=10)
        assert (counters["pool_dropped_frames"], counters["pool_dropped_events"]) == (2, 20)
        assert uplink.queued == 3
        pull, auth = bind_pool_pull(ctx, f"tcp://127.0.0.1:{port}", 10, str(keys))
        try:
            got = _received(pull, 3, uplink=uplink)
            assert got == [b"frame-2", b"frame-3", b"frame-4"]  # in order, once the handshake is done
            assert auth is not None and auth.refused == 0
        finally:
            pull.close(linger=0)
            assert auth is not None
            auth.stop()
    finally:
        uplink.close()
        ctx.term()


def test_a_key_the_pool_does_not_know_is_refused_counted_and_nothing_gets_through(tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    create_keys(keys, "known")
    create_keys(other, "stranger")
    (other / "server.key").write_bytes((keys / "server.key").read_bytes())
    ctx = zmq.Context()
    pull, auth = bind_pool_pull(ctx, "tcp://127.0.0.1:*", 10, str(keys))
    endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    counters: Counter = Counter()
    uplink = Uplink(ctx, [endpoint], 10, str(other), "stranger", 100, counters)
    try:
        uplink.send(0, b"secret", events=1)
        deadline = time.monotonic() + 60
        while not counters["pool_refused"] and time.monotonic() < deadline:
            uplink.pump()
            time.sleep(0.05)
        assert counters["pool_refused"] >= 1  # the sensor knows it was refused
        assert auth is not None and auth.refused >= 1  # the pool counted it
        assert len(auth.refused_keys) == 1
        assert uplink.queued == 1 and pull.poll(200) == 0  # the frame waits here, nothing arrived
        assert uplink.drain(0.2) == 1 and counters["pool_dropped_events"] == 1
    finally:
        uplink.close()
        pull.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()


def test_sensor_stats_are_kept_per_sensor_and_bad_bodies_are_refused(rdb):
    body = {"capture": {"packets": 12, "mode": "live"}, "flowtracker": {"events_out": 3}, "../x": {"a": 1}}
    assert sensor_stats.save(rdb, "pktscope", "web-1", body) == 2
    assert sensor_stats.save(rdb, "pktscope", "bad/name", body) == 0
    assert sensor_stats.save(rdb, "pktscope", "web-2", ["not", "a", "map"]) == 0
    got = sensor_stats.read_all(rdb, "pktscope")
    assert set(got) == {"web-1"}
    assert got["web-1"]["capture"]["packets"] == "12" and got["web-1"]["flowtracker"]["events_out"] == "3"
    assert 0 < rdb.ttl("pktscope:sensor:web-1:stats:capture") <= sensor_stats.SENSOR_STATS_TTL


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--role", "sensor", "--read", "CAP"], "--pool tcp://HOST:PORT"),
        (["--role", "sensor", "--read", "CAP", "--pool", "10.0.0.9:5700"], "write tcp://HOST:PORT"),
        (["--role", "sensor", "--read", "CAP", "--pool", "tcp://10.0.0.9:5700"], "pktscope keys"),
        (
            [
                "--role",
                "sensor",
                "--read",
                "CAP",
                "--pool",
                "tcp://127.0.0.1:5700,tcp://127.0.0.1:5701",
                "--detectors",
                "3",
            ],
            "list one per detector shard",
        ),
        (
            ["--role", "sensor", "--read", "CAP", "--pool", "tcp://127.0.0.1:5700", "--sensor-name", "a/b"],
            "--sensor-name",
        ),
        (["--role", "pool"], "--listen tcp://ADDR:PORT"),
        (["--role", "pool", "--listen", "tcp://0.0.0.0:5700"], "pktscope keys"),
        (["--role", "pool", "--listen", "tcp://127.0.0.1:5700", "--read", "CAP"], "takes no --read"),
        (["--read", "CAP", "--pool", "tcp://127.0.0.1:5700"], "--pool needs --role sensor"),
        ([], "give a source"),
    ],
)
def test_role_flags_that_do_not_fit_exit_2_saying_how_to_fix(tmp_path, argv, says):
    argv = [str(PCAPS / "bug-2646-01" / "input.pcap") if a == "CAP" else a for a in argv]
    done = subprocess.run(
        [*PKTSCOPE, "run", *argv, "--run-dir", tmp_path / "run", "--state-dir", tmp_path / "state"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert says in done.stderr, done.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_each_role_runs_its_share_of_the_programs(tmp_path):
    from services.cli import main as cli_main
    from services.cli.run import build_config
    from services.cli.supervisor import render_config

    parser = cli_main.build_parser()
    create_keys(tmp_path / "keys", "s1")
    common = [
        "--run-dir",
        str(tmp_path / "r"),
        "--state-dir",
        str(tmp_path / "s"),
        "--curve-keys",
        str(tmp_path / "keys"),
    ]
    sensor = build_config(
        parser.parse_args(["run", "--role", "sensor", "--read", str(PCAPS / "bug-2646-01" / "input.pcap"),
                           "--pool", "tcp://10.0.0.9:5700", "--detectors", "2", "--sensor-name", "s1", *common])
    )  # fmt: skip
    assert sensor.pool_endpoints == ["tcp://10.0.0.9:5700", "tcp://10.0.0.9:5701"]
    assert sensor.link_client == "s1" and sensor.link_curve_dir == str((tmp_path / "keys").resolve())
    conf = render_config(sensor)
    assert "[program:capture]" in conf and "[program:flowtracker]" in conf and "[program:decoder]" in conf
    assert "[program:detector]" not in conf and "[program:observer]" not in conf
    pool = build_config(
        parser.parse_args(
            ["run", "--role", "pool", "--listen", "tcp://0.0.0.0:5700", "--detectors", "2", *common]
        )
    )
    assert [pool.detector_endpoint_of(k) for k in range(2)] == ["tcp://0.0.0.0:5700", "tcp://0.0.0.0:5701"]
    conf = render_config(pool)
    assert "[program:detector]" in conf and "[program:observer]" in conf
    assert (
        "[program:capture]" not in conf
        and "[program:flowtracker]" not in conf
        and "[program:decoder]" not in conf
    )
    assert not pool.detector.attribute_processes  # processes live on the sensors, not here
    single = build_config(
        parser.parse_args(["run", "--read", str(PCAPS / "bug-2646-01" / "input.pcap"), *common])
    )
    assert single.role == "all" and "[program:detector]" in render_config(single)
    assert Path(single.detector_endpoint_of(0)).name == "detector.ipc"


def test_a_pool_detector_takes_a_sensor_under_its_key_name_only(short_tmp, redis_url, rdb):
    """A real pool detector process: web-1's events become web-1's entity; frames that web-1's key
    sends under another sensor's name are dropped and counted; its stats land per sensor."""
    import json
    import signal

    from shared import frames
    from shared.config import PipelineConfig

    keys = short_tmp / "keys"
    create_keys(keys, "web-1")
    create_keys(keys, "web-2")
    port = _free_port_below_the_ephemeral_range()
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, redis_prefix="t", role="pool")
    cfg.pool_listen, cfg.link_curve_dir, cfg.detectors = f"tcp://127.0.0.1:{port}", str(keys), 1
    cfg.detector.learning = 0.0
    cfg.detector.attribute_processes = False
    cfg.save()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.detector", "--config", str(short_tmp / "pipeline.json")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ctx = zmq.Context()
    counters: Counter = Counter()
    uplink = Uplink(ctx, [cfg.detector_endpoint_of(0)], 10, str(keys), "web-1", 100, counters)
    try:
        t0 = 1_700_000_000.0
        for seq, (sender, ftype, body) in enumerate(
            [
                ("web-1/flowtracker", frames.FrameType.FLOWS, [row(t0, "10.0.0.5")]),
                ("web-1/flowtracker", frames.FrameType.TICK, {"ts": t0 + 100}),
                ("web-1/flowtracker", frames.FrameType.STATS, {"capture": {"packets": 7}}),
            ]
        ):
            uplink.send(0, frames.encode(ftype, sender, seq, body), 1)
        impostor = [row(t0 + 1, "10.0.0.6")]
        uplink.send(0, frames.encode(frames.FrameType.FLOWS, "web-2/flowtracker", 0, impostor), 1)
        uplink.send(0, frames.encode(frames.FrameType.TICK, "web-2/flowtracker", 1, {"ts": t0 + 100}), 0)

        def entities() -> set[str]:
            return {json.loads(f["alert"])["entity"] for _, f in rdb.xrange("t:alerts")}

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            "host:10.0.0.5@web-1" in entities()
            and int(rdb.hget("t:stats:detector", "sensor_name_refused") or 0) >= 2
        ):
            uplink.pump()
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert "host:10.0.0.5@web-1" in entities()
        assert not any(e.endswith("@web-2") for e in entities()), "web-1's key cannot speak for web-2"
        assert int(rdb.hget("t:stats:detector", "sensor_name_refused") or 0) >= 2
        assert rdb.hget("t:sensor:web-1:stats:capture", "packets") == "7"
        assert not rdb.exists("t:sensor:web-2:stats:capture")
    finally:
        uplink.close()
        ctx.term()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0, err
    assert "sent with the key of sensor 'web-1'" in err


def test_a_curve_pool_detector_also_serves_curve_alerts_on_tcp(short_tmp):
    """The multihost compose example's pool: CURVE on the sensor link and on a TCP alerts endpoint.
    One ZeroMQ context holds one ZAP handler, so the two CURVE servers must not share one (the
    detector crashed at start with "Address already in use (addr='inproc://zeromq.zap.01')")."""
    import signal

    from services.detector.service import DetectorService
    from shared.config import PipelineConfig
    from shared.service import StopFlag

    keys = short_tmp / "keys"
    create_keys(keys, "web-1")
    link, alerts_port = _free_port_below_the_ephemeral_range(), _free_port_below_the_ephemeral_range()
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_prefix="t", role="pool")
    cfg.pool_listen, cfg.link_curve_dir = f"tcp://127.0.0.1:{link}", str(keys)
    cfg.alerts_endpoint, cfg.alerts_curve_dir = f"tcp://127.0.0.1:{alerts_port}", str(keys)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopFlag()  # it takes SIGTERM and SIGINT over: pytest gets them back below
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    service = DetectorService(cfg, stop, 0)
    try:
        assert service.pull_auth is not None and service.auth is not None
        assert service.pub.getsockopt(zmq.LAST_ENDPOINT).decode() == f"tcp://127.0.0.1:{alerts_port}"
    finally:
        service.pull.close()
        service.pub.close(linger=0)
        service.auth.stop()
        service.pull_auth.stop()
        service.pub_ctx.term()
        service.ctx.term()
