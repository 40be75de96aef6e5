# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of shared/pktpack.py, written by hand: it writes and reads the packed packets
through C pointers (shared/recpack.py's twin says why not Cython's pure-Python mode).

Same layout, same answers (tests/test_recpack.py compares both on every corpus packet and on
damaged bodies).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.long cimport PyLong_FromLong, PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    double PyFloat_Unpack8(const char *p, int le) except? -1.0
    int PyFloat_Pack8(double x, char *p, int le) except -1

cdef enum:
    MAGIC = 0x50
    VERSION = 1
    HEAD_SIZE = 6
    PKT_SIZE = 26


cdef inline void _put(unsigned char *p, uint64_t v, int n) noexcept:
    cdef int i
    for i in range(n):
        p[i] = v & 255
        v >>= 8


cdef inline uint64_t _get(const unsigned char *p, int n) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef inline void _set(tuple t, Py_ssize_t i, object v):
    Py_INCREF(v)
    PyTuple_SET_ITEM(t, i, v)


def pack_packets(packets):
    """The batch in the packed layout, or None when a packet does not fit it (send the list)."""
    cdef Py_ssize_t total = HEAD_SIZE, count = 0, o, n
    cdef tuple t
    cdef uint64_t num
    cdef unsigned short linktype
    cdef unsigned int wirelen
    cdef unsigned char *p
    for pkt in packets:
        if type(pkt) is not tuple or len(<tuple>pkt) != 5:
            return None
        t = <tuple>pkt
        if type(t[0]) is not int or type(t[1]) is not float or type(t[2]) is not int:
            return None
        if type(t[3]) is not int or type(t[4]) is not bytes:
            return None
        try:
            num = t[0]; linktype = t[2]; wirelen = t[3]
        except OverflowError:
            return None
        n = PyBytes_GET_SIZE(t[4])
        if n > 0xFFFFFFFF:
            return None
        total += PKT_SIZE + n
        count += 1
    if count > 0xFFFFFFFF:
        return None
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = MAGIC
    p[1] = VERSION
    _put(p + 2, <uint64_t>count, 4)
    o = HEAD_SIZE
    for pkt in packets:
        t = <tuple>pkt
        num = t[0]; linktype = t[2]; wirelen = t[3]
        n = PyBytes_GET_SIZE(t[4])
        _put(p + o, num, 8)
        PyFloat_Pack8(PyFloat_AS_DOUBLE(t[1]), <char *>(p + o + 8), 1)
        _put(p + o + 16, linktype, 2)
        _put(p + o + 18, wirelen, 4)
        _put(p + o + 22, <uint64_t>n, 4)
        memcpy(p + o + PKT_SIZE, PyBytes_AS_STRING(t[4]), n)
        o += PKT_SIZE + n
    return out


def unpack_packets(body):
    """The packet tuples of a packed body; ValueError for anything not whole and well-formed."""
    if type(body) is not bytes:
        raise ValueError("packed packets: not bytes")
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body), o = HEAD_SIZE, i, count, n
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef tuple t
    cdef list out = []
    if size < HEAD_SIZE:
        raise ValueError("packed packets: shorter than its header")
    if p[0] != MAGIC or p[1] != VERSION:
        raise ValueError(f"packed packets: unknown header {p[0]:#x}/{p[1]}")
    count = <Py_ssize_t>_get(p + 2, 4)
    if count > (size - HEAD_SIZE) // PKT_SIZE:
        raise ValueError("packed packets: count larger than the body")
    for i in range(count):
        if o + PKT_SIZE > size:
            raise ValueError("packed packets: truncated header")
        n = <Py_ssize_t>_get(p + o + 22, 4)
        if o + PKT_SIZE + n > size:
            raise ValueError("packed packets: truncated data")
        t = PyTuple_New(5)
        _set(t, 0, PyLong_FromUnsignedLongLong(_get(p + o, 8)))
        _set(t, 1, PyFloat_FromDouble(PyFloat_Unpack8(<const char *>(p + o + 8), 1)))
        _set(t, 2, PyLong_FromLong(<long>_get(p + o + 16, 2)))
        _set(t, 3, PyLong_FromLong(<long>_get(p + o + 18, 4)))
        _set(t, 4, PyBytes_FromStringAndSize(<const char *>(p + o + PKT_SIZE), n))
        o += PKT_SIZE + n
        out.append(t)
    if o != size:
        raise ValueError("packed packets: bytes after the last packet")
    return out
