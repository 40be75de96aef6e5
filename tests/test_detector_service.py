"""The detector as a real subprocess: flow events over real ZeroMQ, alerts on a real SUB socket
and in the Redis stream, EOS/SIGTERM, restarts, and sequence-gap counting."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from test_detector_engine import AFTER, LEARN, T0, flow_event, stream

from shared import frames
from shared.config import PipelineConfig
from shared.sockets import connect_push

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg(short_tmp, redis_url) -> PipelineConfig:
    c = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, redis_prefix="t")
    c.detector.learning = LEARN
    c.save()
    return c


_sockets: list[zmq.Socket] = []


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    while _sockets:
        _sockets.pop().close(linger=0)
    context.term()


def start_detector(cfg: PipelineConfig, rdb) -> subprocess.Popen:
    before = rdb.hget("t:stats:detector", "pid")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.detector", "--config", str(Path(cfg.run_dir) / "pipeline.json")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 15
    while time.time() < deadline:  # ready once it has written its first stats
        pid = rdb.hget("t:stats:detector", "pid")
        if pid is not None and pid != before and int(pid) == proc.pid:
            return proc
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("detector did not start")


def finish(proc: subprocess.Popen, timeout: float = 15) -> int:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stderr.close()
    return rc


class Sender:
    """Plays the flow-tracker: numbered frames on a PUSH socket."""

    def __init__(self, ctx, cfg, name="flowtracker", seq=0) -> None:
        self.sock = connect_push(ctx, cfg.detector_endpoint, cfg.hwm)
        _sockets.append(self.sock)
        self.name = name
        self.seq = seq

    def send(self, ftype, body, skip=0):
        self.seq += skip
        self.sock.send(frames.encode(ftype, self.name, self.seq, body))
        self.seq += 1

    def flows(self, events, skip=0):
        self.send(frames.FrameType.FLOWS, events, skip)

    def eos(self, body=None):
        self.send(frames.FrameType.EOS, body or {"origin": "test"})


def subscribe(ctx, cfg):
    sub = ctx.socket(zmq.SUB)
    _sockets.append(sub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.connect(cfg.alerts_pub_endpoint)
    time.sleep(0.3)  # let the subscription reach the publisher
    return sub


def stats(rdb) -> dict:
    return rdb.hgetall("t:stats:detector")


def test_alerts_reach_the_stream_and_the_pub_socket_then_eos(cfg, ctx, rdb):
    proc = start_detector(cfg, rdb)
    sub = subscribe(ctx, cfg)
    tx = Sender(ctx, cfg)
    tx.flows([flow_event(ts=T0, name="learned.example")])
    tx.send(frames.FrameType.TICK, {"ts": T0 + 1})
    tx.flows([flow_event(ts=AFTER, src="10.9.0.1", name="www.example.com")])
    got = [sub.recv_multipart(), sub.recv_multipart()]
    tx.eos({"origin": "capture", "packets": 3})
    assert finish(proc) == 0
    topics = [m[0] for m in got]
    assert topics == [b"new_process_egress", b"new_process_dest"]
    published = [msgpack.unpackb(m[1], raw=False) for m in got]
    assert published == stream(rdb)  # same alerts, same ids, same fields
    assert published[1]["title"] == "host 10.9.0.1 contacted a new destination: example.com (www.example.com)"
    s = stats(rdb)
    assert s["eos"] == "1" and json.loads(s["eos_body"]) == {"origin": "capture", "packets": 3}
    assert (s["frames_in"], s["events_in"], s["alerts"], s["learning"]) == ("4", "2", "2", "0")
    assert s["frames_lost"] == "0" and s["bad_frames"] == "0"


def test_restart_keeps_the_baseline_and_never_repeats_an_alert(cfg, ctx, rdb):
    learn = [flow_event(ts=T0, name="learned.example")]
    new = [flow_event(ts=AFTER + i, src=f"10.9.1.{i}", name="n.example.com") for i in range(3)]
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg)
    tx.flows(learn)
    tx.flows(new)
    tx.eos()
    assert finish(proc) == 0
    assert stats(rdb)["learning"] == "0"
    first = stream(rdb)
    assert len(first) == 6
    # a restarted detector resumes the learning window, baseline and cooldowns from Redis
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg, seq=0)  # the flow-tracker restarted too
    tx.flows(learn + new)
    tx.flows([flow_event(ts=AFTER + 10, src="10.9.1.9", name="n.example.com")])
    tx.eos()
    assert finish(proc) == 0
    second = stream(rdb)
    assert second[:6] == first
    assert [a["entity"] for a in second[6:]] == ["host:10.9.1.9"] * 2
    assert stats(rdb)["alerts"] == "2"


def test_gaps_are_counted_also_across_a_restart(cfg, ctx, rdb):
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg)
    tx.flows([flow_event(ts=T0)])  # seq 0
    tx.flows([flow_event(ts=T0 + 1)])  # seq 1
    tx.flows([flow_event(ts=T0 + 2)], skip=1)  # seq 3: frame 2 was lost
    tx.eos()  # seq 4
    assert finish(proc) == 0
    assert stats(rdb)["frames_lost"] == "1"
    assert rdb.hget("t:seq:detector", "flowtracker") == "4"
    # frames 5..7 are sent while no detector runs (lost); the new one counts them from Redis
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg, seq=8)
    tx.flows([flow_event(ts=T0 + 3)])
    tx.eos()
    assert finish(proc) == 0
    assert stats(rdb)["frames_lost"] == "3"


def test_bad_frames_are_counted_and_sigterm_exits_cleanly(cfg, ctx, rdb):
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg)
    tx.sock.send(b"\xc1 not msgpack")
    tx.sock.send(msgpack.packb(["flows", 99, "flowtracker", 0, []]))  # unknown version
    tx.send(frames.FrameType.PACKETS, [])  # not for the detector
    tx.send(frames.FrameType.FLOWS, {"not": "a list"})
    tx.send(frames.FrameType.TICK, {"ts": "x"})
    tx.flows([flow_event(ts=T0), {"garbage": 1}])
    deadline = time.time() + 10
    while stats(rdb).get("events_in") != "1" and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 0
    s = stats(rdb)
    assert s["bad_frames"] == "5"
    assert s["bad_events"] == "1" and s["events_in"] == "1"
    assert s.get("eos") is None
    assert s["learning"] == "1"


def test_waits_for_redis_at_startup(short_tmp, ctx, tmp_path_factory):
    """Redis is required: the detector retries until it answers, then works normally."""
    from conftest import start_redis

    directory = tmp_path_factory.mktemp("late-redis")
    url = f"unix://{directory / 'redis.sock'}"
    c = PipelineConfig(run_dir=str(short_tmp), redis_url=url, redis_prefix="t")
    c.save()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.detector", "--config", str(short_tmp / "pipeline.json")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    assert proc.poll() is None  # still waiting, not crashed
    server, url2 = start_redis(directory)
    try:
        assert url2 == url
        Sender(ctx, c).eos({"origin": "late"})
        assert finish(proc, timeout=20) == 0
        import redis

        r = redis.Redis.from_url(url, decode_responses=True)
        assert r.hget("t:stats:detector", "eos") == "1"
        r.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_geoip_databases_from_the_config(cfg, ctx, rdb, tmp_path):
    """The service loads the configured GeoIP databases: new_geo and AS-organisation labels."""
    from mmdb_factory import build_asn_db, build_country_db

    cfg.detector.geoip_country_db = str(
        build_country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "US", "5.9.0.0/16": "DE"})
    )
    cfg.detector.geoip_asn_db = str(
        build_asn_db(tmp_path / "a.mmdb", {"8.8.8.0/24": (15169, "GOOGLE"), "5.9.0.0/16": (24940, "Hetzner")})
    )
    cfg.save()
    proc = start_detector(cfg, rdb)
    tx = Sender(ctx, cfg)
    tx.flows([flow_event(ts=T0, dst="8.8.8.8")])
    tx.flows([flow_event(ts=AFTER, dst="5.9.9.9", name="static.example.de")])
    tx.eos()
    assert finish(proc) == 0
    alerts = stream(rdb)
    got = {a["kind"]: a for a in alerts}
    assert set(got) == {"new_geo", "new_process_dest"}
    geo = {a["detail"]["new"]: a for a in alerts if a["kind"] == "new_geo"}
    assert set(geo) == {"country", "asn"}  # a new country and a new AS: two facts, two alerts
    assert geo["country"]["detail"]["country"] == "DE" and geo["asn"]["detail"]["as_org"] == "Hetzner"
    assert got["new_process_dest"]["detail"]["label"] == "Hetzner"
    stats = rdb.hgetall(f"{cfg.redis_prefix}:stats:detector")
    assert int(stats["geoip.lookups"]) == 2  # the enrichers' counters reach the stats hash
