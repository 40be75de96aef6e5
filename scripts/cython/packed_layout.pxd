# The packed frame layouts of shared/packed.py, for the hand-written twins that read or write
# them (_packed_c.pyx, _pcap_deal_c.pyx, _packed_batch_c.pyx): one place for the sizes and the
# little-endian field access. shared/compiled.py stamps each of those twins with this file too,
# so an edit here rebuilds them; their tests compare the bytes they write with packed.py's.
from libc.stdint cimport uint64_t

cdef extern from "Python.h":
    double PyFloat_Unpack8(const char *p, int le) except? -1.0
    int PyFloat_Pack8(double x, char *p, int le) except -1

cdef enum:
    VERSION = 1
    HEAD_SIZE = 6
    PACKETS_MAGIC = 0x50
    PKT_SIZE = 26
    RECORDS_MAGIC = 0x52
    REC_SIZE = 41
    SRC16 = 1
    DST16 = 2
    HAS_APP = 4


cdef inline void put_le(unsigned char *p, uint64_t v, int n) noexcept:
    """Write the low ``n`` bytes of ``v`` at ``p``, little-endian."""
    cdef int i
    for i in range(n):
        p[i] = v & 255
        v >>= 8


cdef inline uint64_t get_le(const unsigned char *p, int n) noexcept:
    """Read ``n`` little-endian bytes at ``p``."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v
