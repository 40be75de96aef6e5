"""A classic pcap file dealt straight into packed PACKETS bodies: capture's replay loop.

The general replay path reads each record into a ``(ts, bytes, wirelen)`` tuple
(pcapfile.py), appends ``(num, ts, linktype, wirelen, data)`` to its decoder's list
(sharding.deal) and packs each list when it is sent (shared/packed.py): a generator hop, five
Python objects and two copies of the bytes per packet, 0.50 CPU s for the 5x bench capture's
917k packets (in one process, /tmp micro-bench). A classic pcap record is already nearly the
packed layout, so this class walks the file's records in memory (an mmap) and appends each one,
its decoder chosen by the same sharder, to that decoder's packed body.

The service uses it only when its compiled twin runs (``scripts/cython/_pcap_deal_c.pyx``,
shared/compiled.py): the pure packers are slower than msgpack. This module is the reference:
tests/test_pcap_deal.py checks that both give the same bodies, and that those bodies hold
exactly the packets, numbers and batches of the general path, errors included, on every corpus
capture. pcapng files, files that cannot be mapped (a pipe) and link types past the layout's
16 bits take the general path.
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

from services.capture.pcapfile import MAX_RECORD, pcap_geometry, sniff
from services.capture.sharding import make_sharder
from shared.packed import _HEAD, _PKT, PACKETS_MAGIC, VERSION

FILE_HEADER = 24
RECORD_HEADER = 16
# A mapped file's pages count in the process's RSS once touched: the 5x bench capture showed a
# capture of 304 MB instead of 51 MB. Every this many bytes read, the pages behind are dropped
# from the map (MADV_DONTNEED; they stay in the page cache): RSS stays within ~1 MB of the
# general path's, for one madvise call per MB read. (At 8 MB it was still 10 MB above.)
RELEASE_EVERY = 1 << 20


def open_dealer(path: str, decoders: int, bsize: int) -> PcapDealer | None:
    """A dealer over the classic pcap file at ``path``, or None when the general path must read it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(FILE_HEADER)
            if len(head) < FILE_HEADER:
                return None  # the general reader reports the truncated header
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None  # not a regular file (mmap of a pipe), or empty
    buf.madvise(mmap.MADV_SEQUENTIAL)  # read ahead further: it is read once, front to back
    if sniff(head) != "pcap":
        buf.close()
        return None
    big_endian, scale, linktype = pcap_geometry(head)
    if linktype > 0xFFFF:
        buf.close()
        return None  # outside the packed layout: the general path sends such batches as lists
    return PcapDealer(buf, big_endian, scale, linktype, decoders, bsize)


class PcapDealer:
    """Deal the records of a mapped classic pcap file to per-decoder packed bodies.

    ``deal`` has sharding.deal's contract; ``take(i)`` hands out decoder ``i``'s body. ``error``
    is set as pcapfile.CaptureFileReader sets it when the file ends inside a record.
    """

    def __init__(self, buf: Any, big_endian: bool, scale: float, linktype: int, decoders: int, bsize: int) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = FILE_HEADER
        self.rec = struct.Struct((">" if big_endian else "<") + "IIII").unpack_from
        self.scale = scale
        self.linktype = linktype
        self.decoders = max(1, decoders)
        self.bsize = bsize
        self.shard = make_sharder(linktype, self.decoders)
        self.parts: list[list[bytes]] = [[] for _ in range(self.decoders)]
        self.last_nums = [0] * self.decoders
        self.error: str | None = None
        self.ended = False
        self.released = 0  # the map's bytes before this were dropped from this process

    def _release(self) -> None:
        """Drop the pages already read from this process (see RELEASE_EVERY), and notice a file
        cut short since it was mapped: reading a mapped page past the end of the file is SIGBUS,
        so the records end where the file now ends (a "truncated record" error, as when read)."""
        now = self.buf.size()  # an fstat: one per batch
        if now < self.size:
            self.size = now
        end = self.pos - self.pos % mmap.PAGESIZE
        if end - self.released >= RELEASE_EVERY:
            self.buf.madvise(mmap.MADV_DONTNEED, self.released, end - self.released)
            self.released = end

    def _next(self) -> tuple[float, bytes, int] | None:
        """The next record, or None at the end (``error`` says when it was cut short)."""
        if self.ended:
            return None
        pos = self.pos
        left = self.size - pos
        if left < RECORD_HEADER:
            if left > 0:
                self.error = "truncated record header at the end of the file"
            self.ended = True
            return None
        sec, frac, caplen, origlen = self.rec(self.buf, pos)
        if caplen > MAX_RECORD:
            self.error = f"record of {caplen} captured bytes: corrupt record header"
            self.ended = True
            return None
        start = pos + RECORD_HEADER
        if start + caplen > self.size:
            self.error = f"truncated record: {self.size - start} of {caplen} bytes"
            self.ended = True
            return None
        self.pos = start + caplen
        return sec + frac * self.scale, self.buf[start : start + caplen], max(origlen, caplen)

    def skip(self, count: int) -> int:
        """Read past ``count`` records (what a dead predecessor handed out); how many there were."""
        done = 0
        while done < count and self._next() is not None:
            done += 1
        return done

    def deal(self, num: int, until: int) -> tuple[int, float | None, int]:
        """Number records and add each to its decoder's body until one holds ``bsize`` packets
        (its index), ``num`` reaches ``until`` (-1) or the file ends (-2): ``(num, last ts, full)``."""
        self._release()
        ts = None
        while True:
            rec = self._next()
            if rec is None:
                return num, ts, -2
            ts, data, wirelen = rec
            num += 1
            i = self.shard(data)
            parts = self.parts[i]
            parts.append(_PKT.pack(num, ts, self.linktype, wirelen, len(data)) + data)
            self.last_nums[i] = num
            if len(parts) >= self.bsize:
                return num, ts, i
            if num >= until:
                return num, ts, -1

    def pending(self, i: int) -> int:
        """Packets waiting in decoder ``i``'s body."""
        return len(self.parts[i])

    def take(self, i: int) -> tuple[bytes, int, int] | None:
        """Decoder ``i``'s packed body, its packet count and the number of its last packet
        (None when it holds none)."""
        parts = self.parts[i]
        if not parts:
            return None
        self.parts[i] = []
        return _HEAD.pack(PACKETS_MAGIC, VERSION, len(parts)) + b"".join(parts), len(parts), self.last_nums[i]

    def close(self) -> None:
        self.buf.close()


# The compiled twin (written by hand in Cython: it reads the map through a C pointer) takes over
# the class unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("PcapDealer",))
