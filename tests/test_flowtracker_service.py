"""The flow-tracker as a real process: real ZeroMQ in and out, real redis for its stats."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from services.flowtracker.flowlog import read_flow_log
from shared import frames
from shared.config import PipelineConfig
from shared.flowevents import from_row
from shared.frames import FrameType
from shared.packed import pack_records
from shared.redis_keys import Keys
from shared.sockets import bind_pull, connect_push
from tests.conftest import ROOT
from tests.flowtracker_helpers import dns_answer, numbered, numbered_streams, rec, tcp_session

CLIENT = "192.168.5.5"


def start_tracker(tmp: Path, redis_url: str, decoders: int) -> tuple[subprocess.Popen, PipelineConfig]:
    cfg = PipelineConfig(run_dir=str(tmp), run_id="ft-test", redis_url=redis_url, decoders=decoders)
    cfg.flow.flow_log = str(tmp / "flows.jsonl")
    path = cfg.save(tmp / "pipeline.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.flowtracker", "--config", str(path)],
        cwd=ROOT,
        stderr=open(tmp / "tracker.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    sock = Path(cfg.tracker_endpoint[len("ipc://") :])
    deadline = time.time() + 15
    while not sock.exists():
        assert proc.poll() is None, (tmp / "tracker.log").read_text()
        assert time.time() < deadline, "tracker did not bind"
        time.sleep(0.02)
    return proc, cfg


def receive_until_eos(pull: zmq.Socket, timeout: float = 20) -> tuple[list[dict], dict, list[str]]:
    events, senders = [], []
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pull.poll(200):
            continue
        frame = frames.decode(pull.recv())
        senders.append(frame.sender)
        if frame.type == FrameType.FLOWS:
            events += [from_row(row) for row in frame.body]
        elif frame.type == FrameType.EOS:
            return events, frame.body, senders
    raise AssertionError(f"no EOS from the flow tracker; got {len(events)} events from {senders}")


def test_two_decoders_records_and_eos_give_flows_log_and_stats(short_tmp, rdb, redis_url):
    ctx = zmq.Context.instance()
    proc, cfg = start_tracker(short_tmp, redis_url, decoders=2)
    pull = bind_pull(ctx, cfg.detector_endpoint, 100)
    d0 = connect_push(ctx, cfg.tracker_endpoint, 100)
    d1 = connect_push(ctx, cfg.tracker_endpoint, 100)
    try:
        t0 = 1_700_000_000.0
        recs0 = [
            dns_answer(
                t0, CLIENT, "192.168.5.1", "www.example.org", [("www.example.org", "A", 300, "198.51.100.7")]
            )
        ]
        recs0 += tcp_session(t0 + 1, CLIENT, "198.51.100.8", 40001, 443, app={"tls.sni": "api.example.net"})
        recs1 = tcp_session(t0 + 2, CLIENT, "198.51.100.7", 40002, 80)
        recs1 += tcp_session(t0 + 3, "198.51.100.9", CLIENT, 50000, 22)
        recs0, recs1 = numbered_streams(recs0, recs1)
        d0.send(frames.encode(FrameType.RECORDS, "decoder-0", 0, tuple(recs0)))
        d1.send(frames.encode(FrameType.RECORDS, "decoder-1", 0, tuple(recs1[:4])))
        d1.send(b"\x93not a frame")
        packed = pack_records(recs1[4:])  # as a decoder running the compiled codec sends them
        assert packed is not None
        d1.send(frames.encode(FrameType.RECORDS, "decoder-1", 2, packed[:-1]))  # damaged: dropped
        d1.send(frames.encode(FrameType.RECORDS, "decoder-1", 3, packed))  # seq 1 was lost
        d0.send(frames.encode(FrameType.TICK, "decoder-0", 1, {"ts": t0 + 100, "num": 1000}))
        d0.send(frames.encode(FrameType.EOS, "decoder-0", 2, {"origin": "decoder-0", "packets": len(recs0)}))
        d1.send(frames.encode(FrameType.EOS, "decoder-1", 4, {"origin": "decoder-1", "packets": len(recs1)}))
        try:
            events, eos, senders = receive_until_eos(pull)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(short_tmp / 'tracker.log').read_text()}") from None
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in (pull, d0, d1):
            s.close(linger=0)

    assert set(senders) == {"flowtracker"}
    assert eos["origin"] == "flowtracker"
    assert (eos["flows"], eos["packets"], eos["evicted"]) == (4, len(recs0) + len(recs1), 0)
    assert [d["origin"] for d in eos["decoders"]] == ["decoder-0", "decoder-1"]
    starts = [e for e in events if e["ev"] == "start"]
    assert len(starts) == 4
    logged = {e["sport"]: e for e in read_flow_log(cfg.flow.flow_log)}
    assert set(logged) == {53, 40001, 40002, 50000}
    assert (logged[40002]["name"], logged[40002]["name_src"]) == ("www.example.org", "dns")
    assert (logged[40001]["name"], logged[40001]["name_src"]) == ("api.example.net", "tls.sni")
    assert logged[40002]["reason"] == "fin" and logged[40002]["outbound"] is True
    assert logged[50000]["outbound"] is False and logged[50000]["src"] == "198.51.100.9"
    assert logged[53]["reason"] == "idle" and logged[53]["ts"] == t0 + 60  # the TICK moved time past it
    assert logged[53]["proto"] == 17

    stats = rdb.hgetall(Keys().stats("flowtracker"))
    assert stats["eos"] == "1" and stats["run_id"] == "ft-test"
    assert int(stats["records_in"]) == len(recs0) + len(recs1)
    assert int(stats["flows_started"]) == int(stats["flows_ended"]) == 4
    assert int(stats["flows_active"]) == 0
    assert int(stats["bad_frames"]) == 2 and int(stats["frames_lost"]) == 1
    assert int(stats["events_out"]) == len(events)
    assert "flowtracker" in rdb.smembers(Keys().services())


def test_sigterm_ends_flows_as_shutdown_and_exits_0(short_tmp, redis_url):
    ctx = zmq.Context.instance()
    proc, cfg = start_tracker(short_tmp, redis_url, decoders=1)
    pull = bind_pull(ctx, cfg.detector_endpoint, 100)
    d0 = connect_push(ctx, cfg.tracker_endpoint, 100)
    try:
        d0.send(
            frames.encode(
                FrameType.RECORDS,
                "decoder-0",
                0,
                tuple(numbered(tcp_session(5.0, CLIENT, "198.51.100.1", 1, 2, close=False))),
            )
        )
        assert pull.poll(10_000), "no start event"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pull.close(linger=0)
        d0.close(linger=0)
    (end,) = read_flow_log(cfg.flow.flow_log)
    assert end["reason"] == "shutdown" and end["pkts_out"] == 3 and end["pkts_in"] == 2


def _replay_frames(tmp: Path, redis_url: str, bodies: list[tuple], pause: bool = False) -> list[list]:
    """The FLOWS frames' rows a tracker sends for these decoder-0 frames (then EOS); ``pause``:
    the tracker is stopped (SIGSTOP) while they are sent, so all of them wait when it resumes;
    else they are sent 30 ms apart, so that it takes each one alone."""
    tmp.mkdir()
    ctx = zmq.Context.instance()
    proc, cfg = start_tracker(tmp, redis_url, decoders=1)
    pull = bind_pull(ctx, cfg.detector_endpoint, 1000)
    d0 = connect_push(ctx, cfg.tracker_endpoint, 1000)
    out: list[list] = []
    try:
        time.sleep(0.3)  # connected both ways before the tracker stops
        if pause:
            proc.send_signal(signal.SIGSTOP)
        for seq, body in enumerate(bodies):
            d0.send(frames.encode(FrameType.RECORDS, "decoder-0", seq, body))
            if not pause:
                time.sleep(0.03)  # one at a time: the tracker keeps up
        d0.send(frames.encode(FrameType.EOS, "decoder-0", len(bodies), {"origin": "decoder-0"}))
        time.sleep(0.3)
        if pause:
            proc.send_signal(signal.SIGCONT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if not pull.poll(200):
                continue
            frame = frames.decode(pull.recv())
            if frame.type == FrameType.FLOWS:
                out.append([list(row) for row in frame.body])
            elif frame.type == FrameType.EOS:
                break
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        pull.close(linger=0)
        d0.close(linger=0)
    return out


def test_a_burst_of_events_leaves_in_frames_of_at_most_event_chunk(short_tmp, redis_url):
    """A short capture's flows all end at once (and a decoder's end releases a reorder window's
    worth of events): they leave in frames of at most EVENT_CHUNK events, so the detector starts
    on the first while the rest are packed; none is lost or doubled."""
    from services.flowtracker.service import EVENT_CHUNK

    n = 2 * EVENT_CHUNK + 300  # one-datagram UDP flows, all within a second
    t0 = 1_700_000_000.0
    records = numbered(
        rec(t0 + i / n, CLIENT, "198.51.100.1", 20000 + i % 40000, 53 + i // 40000, proto=17) for i in range(n)
    )
    sent = _replay_frames(short_tmp / "t", redis_url, [tuple(records[i : i + 500]) for i in range(0, n, 500)])
    sizes = [len(rows) for rows in sent]
    events = [from_row(row) for rows in sent for row in rows]
    assert max(sizes) <= EVENT_CHUNK and len(sizes) >= 3, sizes
    assert len(events) == 2 * n  # a start and an end per flow
    assert sorted(e["sport"] for e in events if e["ev"] == "end") == sorted(r[6] for r in records)


def test_a_tracker_behind_sends_the_same_events_in_fewer_frames(short_tmp, redis_url):
    """Frames waiting when the tracker gets to them are taken COALESCE_FRAMES at a time before
    its timers run and it sends: the same events in the same order, in fewer FLOWS frames."""
    from services.flowtracker.service import COALESCE_FRAMES

    t0 = 1_700_000_000.0
    bodies, num = [], 0
    for i in range(40):  # each frame 20 s of packet time later: each releases the one before's events
        recs = tcp_session(t0 + 20 * i, CLIENT, "198.51.100.1", 30000 + i, 443)
        recs = [(num + k + 1, *r[1:]) for k, r in enumerate(recs)]
        num += len(recs)
        bodies.append(tuple(recs))
    steady = _replay_frames(short_tmp / "a", redis_url, bodies, pause=False)
    behind = _replay_frames(short_tmp / "b", redis_url, bodies, pause=True)
    assert [r for f in behind for r in f] == [r for f in steady for r in f]
    assert len(steady) >= 20  # about one per decoder frame when keeping up (40)
    assert len(behind) <= len(bodies) // COALESCE_FRAMES + 3 and 2 * len(behind) < len(steady), (
        len(behind),
        len(steady),
    )
