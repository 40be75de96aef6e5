"""Wire format of every message between pktscope services.

A frame is one msgpack array ``[type, version, sender, seq, body]``:

* ``type``    -- one of the ``FrameType`` strings below;
* ``version`` -- ``FRAME_VERSION``; a receiver drops (and counts) frames of another version;
* ``sender``  -- who sent it, e.g. ``"capture"``, ``"decoder-2"``, ``"flowtracker"``;
* ``seq``     -- per-sender frame counter starting at 0, so a receiver can count gaps;
* ``body``    -- depends on the type (see docs/architecture.md).

Bodies are lists of tuples, never per-packet maps: msgpack packs a tuple as an array, and
unpacking with ``use_list=False`` gives tuples back, the cheapest shape for the hot path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from shared.flow_rows import pack_rows

FRAME_VERSION = 2  # 2: flow events travel as rows (shared/flowevents.py), not maps


class FrameType:
    """Frame type tags; short strings keep frames small and logs readable."""

    PACKETS = "pkts"  # capture -> decoder: list of PacketTuple
    RECORDS = "recs"  # decoder -> flow-tracker: list of records (shared.records)
    FLOWS = "flows"  # flow-tracker -> detector: list of flow-event rows (shared.flowevents)
    TICK = "tick"  # any stage -> next: {"ts": packet-time watermark}, keeps timers moving when idle
    EOS = "eos"  # end of stream: {"origin": ..., counters...}; forwarded stage by stage
    ALERT = "alert"  # detector -> PUB subscribers (the topic frame carries the alert kind)
    STATS = "stats"  # sensor -> detector pool: {service: stats hash} of the sensor's instances


ALL_TYPES = frozenset(
    (
        FrameType.PACKETS,
        FrameType.RECORDS,
        FrameType.FLOWS,
        FrameType.TICK,
        FrameType.EOS,
        FrameType.ALERT,
        FrameType.STATS,
    )
)


class FrameError(ValueError):
    """A frame that cannot be used: not msgpack, wrong shape, unknown type or version."""


class Frame(NamedTuple):
    type: str
    version: int
    sender: str
    seq: int
    body: Any


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(ftype: str, sender: str, seq: int, body: Any) -> bytes:
    """Pack one frame."""
    if ftype == FrameType.FLOWS and type(body) is list:
        # the same bytes, the rows packed in one call (shared/flow_rows.py): the header's array
        # of four becomes the frame's array of five, the rows its fifth item
        return pack_rows(body, b"\x95" + _packer.pack((ftype, FRAME_VERSION, sender, seq))[1:])
    return _packer.pack((ftype, FRAME_VERSION, sender, seq, body))


def decode(buf: bytes) -> Frame:
    """Unpack one frame, raising FrameError for anything malformed (the caller counts and drops it)."""
    try:
        obj = msgpack.unpackb(buf, raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"not a msgpack frame: {exc}") from None
    if not isinstance(obj, tuple) or len(obj) != 5:
        raise FrameError("frame is not a 5-element array")
    ftype, version, sender, seq, body = obj
    if version != FRAME_VERSION:
        raise FrameError(f"frame version {version!r} is not {FRAME_VERSION}")
    if ftype not in ALL_TYPES:
        raise FrameError(f"unknown frame type {ftype!r}")
    if not isinstance(sender, str) or not isinstance(seq, int):
        raise FrameError("frame sender/seq have the wrong types")
    return Frame(ftype, version, sender, seq, body)


class SequenceGaps:
    """Counts frames lost between a sender and us from gaps in its sequence numbers.

    A sequence number lower than the last one means the sender restarted (its counter began
    again at 0); that is not a gap. ``last`` can be seeded from durable storage so that a
    restarted receiver still sees what it missed while it was down.
    """

    def __init__(self, last: dict[str, int] | None = None) -> None:
        self.last: dict[str, int] = dict(last or {})
        self.lost = 0

    def see(self, sender: str, seq: int) -> int:
        """Record one frame; return how many frames from this sender were skipped before it."""
        prev = self.last.get(sender)
        self.last[sender] = seq
        if prev is None or seq <= prev:
            return 0
        missing = seq - prev - 1
        self.lost += missing
        return missing
