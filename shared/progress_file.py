"""A service's progress in a small memory-mapped file of the run directory, written after each frame.

Why not Redis: exact crash accounting needs the progress of every frame (shared/continuity.py),
and a Redis write per frame (~4,750 on the 5x bench capture: two decoders and the flow-tracker)
cost a syscall that wakes redis-server, its parsing and its AOF append each time: about 0.3 CPU s
of the whole command's ~6 (measured 2026-12-03 as the gain of writing every 10 ms instead,
which had to be withdrawn: a restarted sender then reused sequence numbers). A store into a
shared file mapping is no syscall at all, and it outlives a kill -9 of the writer: the page
belongs to the page cache, not to the process. Only a host crash loses it, and everything
else of the run with it. The stats hash in Redis still gets the same fields with every stats
write (each second), for `pktscope status` and for a successor on another host.

Layout: a header (magic, the index of the slot last completed) and two slots, each a length
and a msgpack map. A write fills the slot not in use, then flips the index with one aligned
4-byte store, so a writer killed in the middle leaves the previous write intact.

The index word also carries the "in flight" mark (shared/continuity.py: a frame came in since the
last write, and its sends may have begun): 2 + the slot. Setting it is that one 4-byte store, not
a new write of the whole map (per frame, that write had cost the flow-tracker ~8% of its CPU on
the 5x bench capture, py-spy); the next write's flip clears it. Readers see it as
``in_flight: 1`` in the map.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any

import msgpack

MAGIC = b"PKP1"
SLOT_SIZE = 32 * 1024  # bytes per slot; a flow-tracker's progress packs to ~400
_HEADER = struct.Struct("<4sI")  # magic, active slot (0 or 1)
_LENGTH = struct.Struct("<I")
FILE_SIZE = _HEADER.size + 2 * SLOT_SIZE
# The header as it reads after a flip to slot 0 or 1. Copied in with a slice store (a memcpy),
# never with ``_HEADER.pack_into``: CPython's pack_into zeroes its target before it packs, and a
# writer killed in between left a header of zeros, losing every write (seen once in a full run).
_FLIPPED = (_HEADER.pack(MAGIC, 0), _HEADER.pack(MAGIC, 1))
_MARKED = (_HEADER.pack(MAGIC, 2), _HEADER.pack(MAGIC, 3))  # slot 0 or 1, in flight


class ProgressTooLarge(ValueError):
    """A progress map that does not fit a slot (thousands of senders): not written."""


class ProgressFile:
    """The writer's side: one file per service instance, mapped once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self._map = mmap.mmap(fd, FILE_SIZE)
        finally:
            os.close(fd)
        self._active = 1
        self._written = False
        # nothing valid until the first write: an old run's content is dropped
        self._map[: _HEADER.size + _LENGTH.size] = b"\0" * (_HEADER.size + _LENGTH.size)
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack

    def write(self, mapping: dict[str, Any]) -> None:
        """Put ``mapping`` (text keys, int/float/str values) in place of the previous write."""
        blob = self._pack(mapping)
        if len(blob) > SLOT_SIZE - _LENGTH.size:
            raise ProgressTooLarge(f"progress of {len(blob)} bytes does not fit {SLOT_SIZE}")
        slot = 1 - self._active
        off = _HEADER.size + slot * SLOT_SIZE
        m = self._map
        _LENGTH.pack_into(m, off, len(blob))
        m[off + _LENGTH.size : off + _LENGTH.size + len(blob)] = blob
        m[: _HEADER.size] = _FLIPPED[slot]  # the flip: the new slot is complete; only one byte changes
        self._active = slot
        self._written = True

    def mark_in_flight(self) -> None:
        """Mark the last write "in flight" (one byte of the index word changes); the next write clears it."""
        if self._written:
            self._map[: _HEADER.size] = _MARKED[self._active]

    def close(self) -> None:
        self._map.close()


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """What the last completed write said, or None (no file, never written, damaged)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < FILE_SIZE:
        return None
    magic, word = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or word not in (0, 1, 2, 3):
        return None
    slot = word & 1
    off = _HEADER.size + slot * SLOT_SIZE
    (n,) = _LENGTH.unpack_from(data, off)
    if n > SLOT_SIZE - _LENGTH.size:
        return None
    try:
        obj = msgpack.unpackb(data[off + _LENGTH.size : off + _LENGTH.size + n], raw=False)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        return None
    if not isinstance(obj, dict):
        return None
    if word & 2:
        obj["in_flight"] = 1
    return obj
