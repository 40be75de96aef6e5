"""shared/flow_rows: the flow-tracker's rows packed by the hand-written twin are msgpack's bytes."""

from __future__ import annotations

import math
from enum import IntEnum

import msgpack
import pytest

from scripts.bench_detector import event_frames
from shared import compiled, flow_rows, frames
from tests.conftest import BENCH_PCAP, PCAPS

PURE = compiled.pure_module("shared.flow_rows")
PACKERS = {"compiled": flow_rows.pack_rows, "pure": PURE.pack_rows}
CAPTURES = sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))


class Level(IntEnum):
    HIGH = 3


def test_the_twin_is_the_one_running() -> None:
    assert compiled.STATUS["shared.flow_rows"] == "compiled"


@pytest.mark.parametrize("name", PACKERS)
def test_every_capture_s_events_pack_to_msgpack_s_bytes(name: str) -> None:
    rows = 0
    for pcap in [*CAPTURES, BENCH_PCAP]:
        for buf in event_frames(pcap, 512):
            frame = frames.decode(buf)
            body = list(frame.body)
            assert PACKERS[name](body) == msgpack.packb(body)
            as_lists = [list(row) for row in body]  # what the flow table hands out
            assert PACKERS[name](as_lists) == msgpack.packb(body)
            rows += len(body)
    assert rows > 30_000


EDGES = [
    None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
    0.0, -0.0, 1.5, 1e300, -1e-300, math.inf, -math.inf,
    "", "a", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 65535, "x" * 65536, "bücher", "日本", "\x00\x1b",
    b"", b"\x00\xff", bytearray(b"ab"), {}, {"dns.answers": [["a", 1, ["10.0.0.1"]]]}, {1: 2.5}, [], [1, [2, (3,)]],
    (), Level.HIGH, msgpack.ExtType(5, b"x"),
]  # fmt: skip


@pytest.mark.parametrize("name", PACKERS)
def test_edge_values_pack_as_msgpack_packs_them(name: str) -> None:
    pack = PACKERS[name]
    for value in EDGES:
        rows = [(value,), (1, value, "end"), tuple([value] * 17), [value, 2], [value] * 16]
        assert pack(rows) == msgpack.packb(rows), value
    assert pack([]) == msgpack.packb([])
    assert pack([row for row in [(i, float(i), str(i)) for i in range(70_000)]]) == msgpack.packb(
        [(i, float(i), str(i)) for i in range(70_000)]
    )  # an array16 and an array32 of rows, buffers grown many times
    assert pack([[1, 2], (3,)]) == msgpack.packb([[1, 2], (3,)])  # a list as a row
    assert pack(((1,),)) == msgpack.packb(((1,),))  # rows not in a list
    assert pack([(1,)], head=b"\x95\xa5flows") == b"\x95\xa5flows" + msgpack.packb([(1,)])


@pytest.mark.parametrize("name", PACKERS)
def test_values_msgpack_refuses_are_refused(name: str) -> None:
    for value in (2**64, -(2**63) - 1, "\ud800", object()):
        with pytest.raises((OverflowError, TypeError, UnicodeEncodeError, ValueError)):
            msgpack.packb([(value,)])
        with pytest.raises((OverflowError, TypeError, UnicodeEncodeError, ValueError)):
            PACKERS[name]([(value,)])


def test_flows_frames_are_the_frames_they_were() -> None:
    rows = [("start", 1, 2.5, 17, 4, "10.0.0.1", 53, "10.0.0.2", 5353, False, 2.5, 2.5, 1, 80, 0, 0, {})]
    assert frames.encode(frames.FrameType.FLOWS, "flowtracker", 9, rows) == msgpack.packb(
        (frames.FrameType.FLOWS, frames.FRAME_VERSION, "flowtracker", 9, rows), use_bin_type=True
    )
    assert frames.decode(frames.encode(frames.FrameType.FLOWS, "ft", 1, rows)).body == tuple(map(tuple, rows))
