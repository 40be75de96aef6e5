"""The decoder as a real process between real ZeroMQ sockets, with a real Redis for its stats."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import dpkt
import msgpack
import pytest
import zmq

from services.decoder import packed_batch
from shared import frames, packed
from shared.config import PipelineConfig
from shared.frames import FrameType
from shared.packed import records_of
from shared.redis_keys import Keys
from shared.sockets import bind_pull, connect_push
from tests.conftest import PCAPS, ROOT
from tests.test_decoder_corpus import read_packets

TIMEOUT_MS = 15_000


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def start_decoder(cfg: PipelineConfig, index: int = 0) -> subprocess.Popen:
    path = cfg.save()
    return subprocess.Popen(
        [sys.executable, "-m", "services.decoder", "--config", str(path), "--index", str(index)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def receive(sock: zmq.Socket) -> frames.Frame:
    assert sock.poll(TIMEOUT_MS), "the decoder sent nothing"
    return frames.decode(sock.recv())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_decoder_service_end_to_end(short_tmp, redis_url, rdb, zctx):
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, decoders=1, hwm=20)
    tracker = bind_pull(zctx, cfg.tracker_endpoint, cfg.hwm)
    proc = start_decoder(cfg)
    try:
        push = connect_push(zctx, cfg.decoder_endpoint(0), cfg.hwm)
        packets = read_packets(PCAPS / "decode-sll2-02" / "input.pcap")  # 159 packets
        broken = (1000, 1.0, 1, 10, b"\x00" * 10)  # a malformed packet inside a good frame
        batches = [packets[:64], packets[64:128], packets[128:] + [broken]]
        seq = 0
        for batch in batches[:2]:
            push.send(frames.encode(FrameType.PACKETS, "capture", seq, tuple(batch)))
            seq += 1
        push.send(b"\x93not a frame")  # bad frame: dropped and counted
        push.send(frames.encode(FrameType.PACKETS, "capture", seq, (("not", "a packet"),)))  # bad shape
        seq += 1
        damaged = packed.pack_packets(packets[:64])[:-1]  # packed as capture does, cut short: bad
        push.send(frames.encode(FrameType.PACKETS, "capture", seq, damaged))
        seq += 1
        push.send(frames.encode(FrameType.TICK, "capture", seq, {"ts": 42.0}))
        seq += 2  # one frame lost on the way
        # the last batch packed, as capture sends it: the decoder's packed path (when compiled)
        push.send(frames.encode(FrameType.PACKETS, "capture", seq, packed.pack_packets(batches[2])))
        seq += 1
        push.send(frames.encode(FrameType.EOS, "capture", seq, {"origin": "capture", "packets": 160}))

        got = [receive(tracker) for _ in range(5)]
        assert [f.type for f in got] == ["recs", "recs", "tick", "recs", "eos"]
        assert [f.sender for f in got] == ["decoder-0"] * 5
        assert [f.seq for f in got] == [0, 1, 2, 3, 4]
        records = [r for f in got if f.type == "recs" for r in records_of(f.body)]
        assert len(records) == 159
        assert all(r[3] == 6 and 80 in (r[6], r[7]) and len(r[4]) in (4, 16) for r in records)
        assert got[2].body == {"ts": 42.0}
        eos = got[4].body
        assert eos["origin"] == "decoder-0" and eos["upstream"] == {"origin": "capture", "packets": 160}
        assert (eos["packets"], eos["decoded"], eos["malformed"], eos["non_ip"]) == (160, 159, 1, 0)
        assert proc.wait(timeout=15) == 0

        stats = rdb.hgetall(Keys(cfg.redis_prefix).stats("decoder-0"))
        assert stats["eos"] == "1"
        assert int(stats["packets_in"]) == 160 and int(stats["records_out"]) == 159
        assert int(stats["frames_in"]) == 7 and int(stats["frames_out"]) == 5
        assert int(stats["bad_frames"]) == 3 and int(stats["frames_lost"]) == 1
        assert int(stats["malformed"]) == 1 and int(stats["decoded"]) == 159
        assert "decoder-0" in rdb.smembers(Keys(cfg.redis_prefix).services())
        assert stats["decode_path"] == ("packed" if packed_batch.COMPILED else "tuples")
    finally:
        stop(proc)


def test_decoder_without_redis_stops_cleanly_on_sigterm(short_tmp, zctx):
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=f"unix://{short_tmp}/absent.sock", hwm=20)
    tracker = bind_pull(zctx, cfg.tracker_endpoint, cfg.hwm)
    proc = start_decoder(cfg, index=3)
    try:
        push = connect_push(zctx, cfg.decoder_endpoint(3), cfg.hwm)
        packets = read_packets(PCAPS / "decode-chdlc-01" / "hdlc-http_1tx.pcap")
        push.send(frames.encode(FrameType.PACKETS, "capture", 0, tuple(packets)))
        got = receive(tracker)
        assert (got.type, got.sender, len(records_of(got.body))) == ("recs", "decoder-3", 17)
        # packed when the compiled codec runs (shared/packed.py), plain msgpack data otherwise
        assert isinstance(got.body, bytes) == packed.COMPILED
        assert msgpack.packb(got.body)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "stopping on signal" in proc.stderr.read()
    finally:
        stop(proc)


def test_application_layer_problems_show_in_the_decoder_stats(short_tmp, redis_url, rdb, zctx):
    """A DNS message cut short is counted by the app layer and published as app.* in Redis."""
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, decoders=1, hwm=20)
    tracker = bind_pull(zctx, cfg.tracker_endpoint, cfg.hwm)
    proc = start_decoder(cfg)
    try:
        push = connect_push(zctx, cfg.decoder_endpoint(0), cfg.hwm)
        udp = dpkt.udp.UDP(sport=5353, dport=53, data=b"\x12\x34\x01")  # 3 bytes of a 12-byte header
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17, data=udp)
        ip.len = len(ip)
        frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))
        packets = tuple((n, 1.0 + n, 1, len(frame), frame) for n in range(1, 4))
        push.send(frames.encode(FrameType.PACKETS, "capture", 0, packets))
        push.send(frames.encode(FrameType.EOS, "capture", 1, {"origin": "capture"}))
        assert [receive(tracker).type for _ in range(2)] == ["recs", "eos"]
        assert proc.wait(timeout=15) == 0
        stats = rdb.hgetall(Keys(cfg.redis_prefix).stats("decoder-0"))
        assert int(stats["app.dns_parse_errors"]) == 3
        assert int(stats["malformed"]) == 0  # the packets themselves were fine
    finally:
        stop(proc)
