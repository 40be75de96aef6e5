# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of services/capture/pcap_deal.py, written by hand: it reads the mapped pcap
file's record headers through a C pointer and copies each record into its decoder's packed body
(a double among the fields, which Cython's pure-Python mode cannot write).

Same bodies, same errors (tests/test_pcap_deal.py). The 5x bench capture, read + deal + pack in
one process: 0.50 CPU s on the general path, see docs/benchmarks.md for this path's figure.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from packed_layout cimport HEAD_SIZE, PACKETS_MAGIC, PKT_SIZE, VERSION, PyFloat_Pack8
from packed_layout cimport put_le as _put

import mmap

from services.capture.pcapfile import MAX_RECORD as _MAX_RECORD
from services.capture.sharding import ethernet_shard, make_sharder

# the pcap file's own headers (the packets layout is packed_layout.pxd's)
cdef enum:
    FILE_HEADER = 24
    RECORD_HEADER = 16

cdef Py_ssize_t MAX_RECORD = _MAX_RECORD
# as pcap_deal.RELEASE_EVERY (not imported from there: that module imports this one;
# tests/test_pcap_deal.py checks both agree)
RELEASE_EVERY = 1 << 20
cdef Py_ssize_t _RELEASE_EVERY = RELEASE_EVERY
cdef Py_ssize_t PAGE = mmap.PAGESIZE
_DONTNEED = mmap.MADV_DONTNEED


cdef inline uint32_t _u32(const unsigned char *q, bint big) noexcept:
    if big:
        return (<uint32_t>q[0] << 24) | (<uint32_t>q[1] << 16) | (<uint32_t>q[2] << 8) | <uint32_t>q[3]
    return (<uint32_t>q[3] << 24) | (<uint32_t>q[2] << 16) | (<uint32_t>q[1] << 8) | <uint32_t>q[0]


cdef class PcapDealer:
    """Deal the records of a mapped classic pcap file to per-decoder packed bodies (see the
    pure class in services/capture/pcap_deal.py)."""

    cdef object buf
    cdef object shard
    cdef const unsigned char[::1] view
    cdef const unsigned char *p
    cdef public Py_ssize_t size, pos
    cdef bint big, direct
    cdef double scale
    cdef public int linktype
    cdef public Py_ssize_t decoders, bsize
    cdef unsigned char **bodies
    cdef Py_ssize_t *lens
    cdef Py_ssize_t *caps
    cdef Py_ssize_t *counts
    cdef uint64_t *last_nums
    cdef public object error
    cdef public bint ended
    cdef public Py_ssize_t released
    # the record _next found
    cdef Py_ssize_t r_start, r_caplen
    cdef uint32_t r_wirelen
    cdef double r_ts

    def __cinit__(self):
        self.bodies = NULL
        self.lens = self.caps = self.counts = NULL
        self.last_nums = NULL
        self.decoders = 0

    def __init__(self, buf, big_endian, scale, linktype, decoders, bsize):
        cdef Py_ssize_t i
        self.buf = buf
        self.size = len(buf)
        self.view = buf
        self.p = &self.view[0]
        self.pos = FILE_HEADER
        self.big = bool(big_endian)
        self.scale = scale
        self.linktype = linktype
        self.decoders = max(1, decoders)
        self.bsize = bsize
        self.shard = make_sharder(linktype, self.decoders)
        self.direct = linktype == 1 and self.decoders > 1
        self.error = None
        self.ended = False
        self.released = 0
        self.bodies = <unsigned char **>malloc(self.decoders * sizeof(unsigned char *))
        self.lens = <Py_ssize_t *>malloc(self.decoders * sizeof(Py_ssize_t))
        self.caps = <Py_ssize_t *>malloc(self.decoders * sizeof(Py_ssize_t))
        self.counts = <Py_ssize_t *>malloc(self.decoders * sizeof(Py_ssize_t))
        self.last_nums = <uint64_t *>malloc(self.decoders * sizeof(uint64_t))
        if not (self.bodies and self.lens and self.caps and self.counts and self.last_nums):
            raise MemoryError()
        for i in range(self.decoders):
            self.bodies[i] = NULL
        for i in range(self.decoders):
            self.bodies[i] = <unsigned char *>malloc(1 << 16)
            if self.bodies[i] == NULL:
                raise MemoryError()
            self.caps[i] = 1 << 16
            self.lens[i] = HEAD_SIZE
            self.counts[i] = 0
            self.last_nums[i] = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.bodies != NULL:
            for i in range(self.decoders):
                free(self.bodies[i])
            free(self.bodies)
        free(self.lens)
        free(self.caps)
        free(self.counts)
        free(self.last_nums)

    cdef bint _next(self):
        """Find the next record (r_*); False at the end, with ``error`` set when cut short."""
        cdef Py_ssize_t pos = self.pos, left, start
        cdef uint32_t sec, frac, caplen, origlen
        if self.ended:
            return False
        left = self.size - pos
        if left < RECORD_HEADER:
            if left > 0:
                self.error = "truncated record header at the end of the file"
            self.ended = True
            return False
        sec = _u32(self.p + pos, self.big)
        frac = _u32(self.p + pos + 4, self.big)
        caplen = _u32(self.p + pos + 8, self.big)
        origlen = _u32(self.p + pos + 12, self.big)
        if caplen > MAX_RECORD:
            self.error = f"record of {caplen} captured bytes: corrupt record header"
            self.ended = True
            return False
        start = pos + RECORD_HEADER
        if start + <Py_ssize_t>caplen > self.size:
            self.error = f"truncated record: {self.size - start} of {caplen} bytes"
            self.ended = True
            return False
        self.pos = start + caplen
        self.r_start = start
        self.r_caplen = caplen
        self.r_wirelen = origlen if origlen > caplen else caplen
        self.r_ts = <double>sec + <double>frac * self.scale
        return True

    cdef int _release(self) except -1:
        """Drop the pages already read from this process (pcap_deal.RELEASE_EVERY), and end the
        records where the file now ends if it was cut short since it was mapped (SIGBUS else)."""
        cdef Py_ssize_t now = self.buf.size()
        cdef Py_ssize_t end
        if now < self.size:
            self.size = now
        end = self.pos - self.pos % PAGE
        if end - self.released >= _RELEASE_EVERY:
            self.buf.madvise(_DONTNEED, self.released, end - self.released)
            self.released = end
        return 0

    def skip(self, count):
        """Read past ``count`` records; how many there were."""
        cdef Py_ssize_t done = 0, want = count
        while done < want and self._next():
            done += 1
        return done

    cdef int _grow(self, Py_ssize_t i, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.caps[i]
        cdef unsigned char *grown
        while cap < need:
            cap *= 2
        grown = <unsigned char *>realloc(self.bodies[i], cap)
        if grown == NULL:
            raise MemoryError()
        self.bodies[i] = grown
        self.caps[i] = cap
        return 0

    def deal(self, num, until):
        """As the pure class: ``(num, last ts, full)``."""
        cdef uint64_t n = num, stop_at = until
        cdef Py_ssize_t i, o, caplen
        cdef unsigned char *q
        cdef bint seen = False
        cdef double ts = 0.0
        self._release()
        while True:
            if not self._next():
                return n, (ts if seen else None), -2
            seen = True
            ts = self.r_ts
            caplen = self.r_caplen
            n += 1
            if self.decoders == 1:
                i = 0
            else:
                data = PyBytes_FromStringAndSize(<const char *>(self.p + self.r_start), caplen)
                i = ethernet_shard(data, self.decoders) if self.direct else self.shard(data)
                if i < 0 or i >= self.decoders:
                    i = 0
            o = self.lens[i]
            if o + PKT_SIZE + caplen > self.caps[i]:
                self._grow(i, o + PKT_SIZE + caplen)
            q = self.bodies[i] + o
            _put(q, n, 8)
            PyFloat_Pack8(ts, <char *>(q + 8), 1)
            _put(q + 16, <uint64_t>self.linktype, 2)
            _put(q + 18, self.r_wirelen, 4)
            _put(q + 22, <uint64_t>caplen, 4)
            memcpy(q + PKT_SIZE, self.p + self.r_start, caplen)
            self.lens[i] = o + PKT_SIZE + caplen
            self.counts[i] += 1
            self.last_nums[i] = n
            if self.counts[i] >= self.bsize:
                return n, ts, i
            if n >= stop_at:
                return n, ts, -1

    def pending(self, Py_ssize_t i):
        """Packets waiting in decoder ``i``'s body."""
        if i < 0 or i >= self.decoders:
            raise IndexError("no such decoder")
        return self.counts[i]

    def take(self, Py_ssize_t i):
        """Decoder ``i``'s packed body, its packet count and the number of its last packet."""
        cdef unsigned char *b
        if i < 0 or i >= self.decoders:
            raise IndexError("no such decoder")
        if self.counts[i] == 0:
            return None
        b = self.bodies[i]
        b[0] = PACKETS_MAGIC
        b[1] = VERSION
        _put(b + 2, <uint64_t>self.counts[i], 4)
        body = PyBytes_FromStringAndSize(<const char *>b, self.lens[i])
        count = self.counts[i]
        self.lens[i] = HEAD_SIZE
        self.counts[i] = 0
        return body, count, self.last_nums[i]

    def close(self):
        self.view = None
        self.p = NULL
        self.ended = True
        self.buf.close()
