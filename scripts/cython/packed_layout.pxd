# The packed frame layouts of shared/packed.py, for the hand-written twins that read or write
# them (_packed_c.pyx, _pcap_deal_c.pyx, _packed_batch_c.pyx, _packed_records_c.pyx): one place
# for the sizes, the little-endian field access and the checks of a body's header and records. shared/compiled.py stamps each of those twins with this file too,
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


cdef inline Py_ssize_t checked_count(object body, int magic, Py_ssize_t least, str what) except -1:
    """As shared/packed._count: the header's item count, checked (right magic and version, no
    more items than the body could hold at ``least`` bytes each); ValueError otherwise."""
    if type(body) is not bytes:
        raise ValueError(f"packed {what}: not bytes")
    cdef Py_ssize_t size = len(<bytes>body), count
    cdef const unsigned char *p = <const unsigned char *><char *>(<bytes>body)
    if size < HEAD_SIZE:
        raise ValueError(f"packed {what}: shorter than its header")
    if p[0] != magic or p[1] != VERSION:
        raise ValueError(f"packed {what}: unknown header {p[0]:#x}/{p[1]}")
    count = <Py_ssize_t>get_le(p + 2, 4)
    if count > (size - HEAD_SIZE) // least:
        raise ValueError(f"packed {what}: count larger than the body")
    return count


cdef inline Py_ssize_t record_end(const unsigned char *p, Py_ssize_t o, Py_ssize_t size,
                                  Py_ssize_t *app_at, Py_ssize_t *app_len) except -1:
    """Check the record at offset ``o`` of a RECORDS body of ``size`` bytes, as
    shared/packed.unpack_records does (ValueError with its words), and return where the next one
    begins; ``app_at`` is set to where its app map starts (-1: none), ``app_len`` to its length."""
    cdef int kind
    cdef Py_ssize_t ls, ld, la
    if o + REC_SIZE > size:
        raise ValueError("packed records: truncated record")
    kind = p[o]
    if kind > 7:
        raise ValueError(f"packed records: unknown kind {kind}")
    ls = 16 if kind & SRC16 else 4
    ld = 16 if kind & DST16 else 4
    if o + REC_SIZE + ls + ld > size:
        raise ValueError("packed records: truncated addresses")
    o += REC_SIZE + ls + ld
    app_at[0] = -1
    app_len[0] = 0
    if kind & HAS_APP:
        if o + 4 > size:
            raise ValueError("packed records: truncated app length")
        la = <Py_ssize_t>get_le(p + o, 4)
        o += 4
        if o + la > size:
            raise ValueError("packed records: truncated app map")
        app_at[0] = o
        app_len[0] = la
        o += la
    return o


cdef inline object app_map(object unpackb, bytes body, Py_ssize_t at, Py_ssize_t n):
    """A record's app map at ``body[at:at + n]``, as shared/packed._unpack_app decodes it
    (``unpackb`` is msgpack.unpackb); ValueError for a bad one."""
    try:
        return unpackb(body[at:at + n], raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"packed records: bad app map: {exc}") from None
