"""The flow-tracker's merge across several live captures (services/flowtracker/capture_merge.py).

Records are (num, ts, ...) as the decoders send them; capture k of C numbers k + C, k + 2C, ...
"""

from __future__ import annotations

import math
import random

import pytest

from services.flowtracker.capture_merge import CaptureTimeMerge

C = 2


def rec(capture: int, j: int, ts: float, flow: str = "f") -> tuple:
    """The j-th packet (1-based) of ``capture``, at packet time ``ts``."""
    return (j * C + capture, ts, flow)


def test_records_of_two_captures_leave_in_packet_time_order():
    m = CaptureTimeMerge(decoders=2, captures=C)
    a = [rec(0, 1, 10.0), rec(0, 2, 10.4), rec(0, 3, 11.0)]
    b = [rec(1, 1, 10.2), rec(1, 2, 10.6)]
    m.add("decoder-0", a[:2])
    m.add("decoder-1", [a[2]])
    m.add("decoder-0", b)
    assert m.release() == []  # no decoder has told about both captures yet
    for dec in ("decoder-0", "decoder-1"):
        m.tick(dec, 3 * C + 0, 11.0)  # capture 0 handed out 3 packets, the last at 11.0
        m.tick(dec, 2 * C + 1, 10.8)  # capture 1: 2 packets, ticking at 10.8
    out = m.release()
    # up to the lower of the two captures' watermarks (10.8): a[2] at 11.0 waits
    assert out == [a[0], b[0], a[1], b[1]]
    assert m.watermark == 10.8
    for dec in ("decoder-0", "decoder-1"):
        m.tick(dec, 2 * C + 1, 11.5)
    assert m.release() == [a[2]]
    assert m.watermark == 11.0  # capture 0 has passed 11.0 only


def test_an_idle_capture_does_not_hold_the_other_back_once_it_ticks():
    m = CaptureTimeMerge(decoders=1, captures=C)
    busy = [rec(0, j, 100.0 + j) for j in range(1, 6)]
    m.add("decoder-0", busy)
    m.tick("decoder-0", 5 * C, 105.0)
    assert m.release() == []  # capture 1 has said nothing: it might still have older packets
    m.tick("decoder-0", 0 * C + 1, 104.0)  # idle capture 1, ticking on its clock: no packets yet
    assert m.release() == busy[:4]
    m.tick("decoder-0", 1, 110.0)
    assert m.release() == busy[4:]
    assert m.watermark == 105.0


def test_one_captures_order_is_kept_even_when_its_clock_steps_back():
    m = CaptureTimeMerge(decoders=1, captures=C)
    own = [rec(0, 1, 5.0), rec(0, 2, 4.9), rec(0, 3, 5.1)]  # a timestamp going back within capture 0
    other = [rec(1, 1, 5.05)]
    m.add("decoder-0", own)
    m.add("decoder-0", other)
    m.tick("decoder-0", 3 * C, 6.0)
    m.tick("decoder-0", 1 * C + 1, 6.0)
    out = m.release()
    assert [r for r in out if r[0] % C == 0] == own  # a merge: never a sort within a capture
    assert sorted(out) == sorted(own + other)


def test_shuffled_frames_give_one_order():
    """However the decoders' frames interleave, the output is the same (as with one capture)."""
    rng = random.Random(7)
    packets = []
    for cap in range(3):
        t = 0.0
        for j in range(1, 300):
            t += rng.random() * 0.01
            packets.append((cap, j, t, rng.randrange(4)))  # decoder by flow
    outs = []
    for seed in range(4):
        r = random.Random(seed)
        m = CaptureTimeMerge(decoders=4, captures=3, max_buffered=10_000)
        frames = []
        for cap in range(3):
            for dec in range(4):
                mine = [(j * 3 + cap, t, dec) for c, j, t, d in packets if c == cap and d == dec]
                frames += [(f"decoder-{dec}", mine[i : i + 17]) for i in range(0, len(mine), 17)]
        # a decoder's frames of one capture stay in order; everything else interleaves at random
        queues: dict[tuple, list] = {}
        for sender, body in frames:
            queues.setdefault((sender, body[0][0] % 3), []).append(body)
        out = []
        while queues:
            key = r.choice(sorted(queues))
            sender, _cap = key
            m.add(sender, queues[key].pop(0))
            if not queues[key]:
                del queues[key]
            out += m.release()
        for dec in range(4):
            m.finish(f"decoder-{dec}")
        out += m.release()
        assert m.watermark == max(t for *_x, t, _d in packets)
        outs.append(out)
    assert len(outs[0]) == len(packets)
    assert all(o == outs[0] for o in outs)
    assert [r[1] for r in outs[0]] == sorted(r[1] for r in outs[0])


def test_a_frame_mixing_captures_is_refused():
    m = CaptureTimeMerge(decoders=1, captures=C)
    with pytest.raises(ValueError):
        m.add("decoder-0", [rec(0, 1, 1.0), rec(1, 1, 1.1)])
    with pytest.raises(ValueError):
        m.add("decoder-0", [("x", 1.0)])
    assert m.buffered == 0


def test_a_silent_capture_holds_a_bounded_backlog():
    m = CaptureTimeMerge(decoders=1, captures=C, max_buffered=100)
    m.tick("decoder-0", 1, 0.0)  # capture 1 ticks once, then goes silent
    for j in range(1, 301):
        m.add("decoder-0", [rec(0, j, float(j))])
        m.tick("decoder-0", j * C, float(j))
        m.release()
    assert m.buffered <= 101
    assert m.forced > 0


def test_finished_decoders_release_everything_and_the_watermark_reaches_the_end():
    m = CaptureTimeMerge(decoders=1, captures=C)
    m.add("decoder-0", [rec(1, 1, 3.0)])
    m.finish("decoder-0")
    assert m.all_finished
    assert m.release() == [rec(1, 1, 3.0)]
    assert m.watermark == 3.0
    m.highest = 9.0  # the captures' last packet time, from the end of stream
    m.release()
    assert m.watermark == 9.0
    assert not math.isinf(m.watermark)
