# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of shared/flow_rows.py, written by hand: rows of flow events packed straight into
one buffer, byte for byte what msgpack writes (tests/test_flow_rows.py).

None, bools, ints that fit 64 bits, floats and str are written here, in msgpack's own encodings
(the smallest int form, unsigned for positive ints as msgpack's packer chooses, float64, str as
fixstr/str8/16/32); every other value (maps, arrays inside a row, bytes, subclasses, larger
ints) is packed by msgpack and its bytes copied in, so errors are msgpack's too.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

import msgpack

cdef extern from "Python.h":
    int PyFloat_Pack8(double x, char *p, int le) except -1
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


cdef struct Buf:
    char *p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _room(Buf *b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef char *p
    if b.n + more <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.n + more:
        cap = b.n + more
    p = <char *>PyMem_Realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline void _be(char *p, uint64_t v, int n) noexcept:
    """The low ``n`` bytes of ``v`` at ``p``, big-endian (msgpack's order)."""
    cdef int i
    for i in range(n - 1, -1, -1):
        p[i] = <char>(v & 255)
        v >>= 8


cdef int _head(Buf *b, Py_ssize_t n, int fix, int fixmax, int c16, int c32) except -1:
    """A container or string header: the fix form below ``fixmax``, else the 16- or 32-bit one
    (``c16`` 0 for strings' str8 below 256, written by the caller)."""
    _room(b, 5)
    if n < fixmax:
        b.p[b.n] = <char>(fix | n)
        b.n += 1
    elif n < 0x10000:
        b.p[b.n] = <char>c16
        _be(b.p + b.n + 1, n, 2)
        b.n += 3
    else:
        b.p[b.n] = <char>c32
        _be(b.p + b.n + 1, n, 4)
        b.n += 5
    return 0


cdef int _generic(Buf *b, object v) except -1:
    cdef bytes out = _pack(v)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(out)
    _room(b, n)
    memcpy(b.p + b.n, PyBytes_AS_STRING(out), n)
    b.n += n
    return 0


cdef int _int(Buf *b, object v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    cdef uint64_t u
    if overflow != 0:
        if overflow < 0:
            return _generic(b, v)  # below int64: msgpack raises
        u = PyLong_AsUnsignedLongLong(v)  # OverflowError past 2**64, as msgpack's
        _room(b, 9)
        b.p[b.n] = <char>0xCF
        _be(b.p + b.n + 1, u, 8)
        b.n += 9
        return 0
    _room(b, 9)
    if x >= 0:
        u = <uint64_t>x
        if u < 0x80:
            b.p[b.n] = <char>u
            b.n += 1
        elif u < 0x100:
            b.p[b.n] = <char>0xCC
            b.p[b.n + 1] = <char>u
            b.n += 2
        elif u < 0x10000:
            b.p[b.n] = <char>0xCD
            _be(b.p + b.n + 1, u, 2)
            b.n += 3
        elif u < 0x100000000:
            b.p[b.n] = <char>0xCE
            _be(b.p + b.n + 1, u, 4)
            b.n += 5
        else:
            b.p[b.n] = <char>0xCF
            _be(b.p + b.n + 1, u, 8)
            b.n += 9
    elif x >= -32:
        b.p[b.n] = <char>(<int>x & 0xFF)
        b.n += 1
    elif x >= -128:
        b.p[b.n] = <char>0xD0
        b.p[b.n + 1] = <char>(<int>x & 0xFF)
        b.n += 2
    elif x >= -32768:
        b.p[b.n] = <char>0xD1
        _be(b.p + b.n + 1, <uint64_t>x, 2)
        b.n += 3
    elif x >= -2147483648:
        b.p[b.n] = <char>0xD2
        _be(b.p + b.n + 1, <uint64_t>x, 4)
        b.n += 5
    else:
        b.p[b.n] = <char>0xD3
        _be(b.p + b.n + 1, <uint64_t>x, 8)
        b.n += 9
    return 0


cdef int _str(Buf *b, object v) except -1:
    cdef Py_ssize_t n
    cdef const char *s = PyUnicode_AsUTF8AndSize(v, &n)
    if n > 0xFFFFFFFF:
        return _generic(b, v)
    if n < 32:
        _room(b, 1 + n)
        b.p[b.n] = <char>(0xA0 | n)
        b.n += 1
    elif n < 0x100:
        _room(b, 2 + n)
        b.p[b.n] = <char>0xD9
        b.p[b.n + 1] = <char>n
        b.n += 2
    else:
        _head(b, n, 0, 0, 0xDA, 0xDB)
        _room(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef int _value(Buf *b, object v) except -1:
    cdef type t = type(v)
    if v is None:
        _room(b, 1)
        b.p[b.n] = <char>0xC0
        b.n += 1
    elif v is True or v is False:
        _room(b, 1)
        b.p[b.n] = <char>(0xC3 if v is True else 0xC2)
        b.n += 1
    elif t is int:
        _int(b, v)
    elif t is float:
        _room(b, 9)
        b.p[b.n] = <char>0xCB
        PyFloat_Pack8(PyFloat_AS_DOUBLE(v), b.p + b.n + 1, 0)
        b.n += 9
    elif t is str:
        _str(b, v)
    elif t is dict and len(<dict>v) == 0:  # most rows' application facts: none
        _room(b, 1)
        b.p[b.n] = <char>0x80
        b.n += 1
    else:
        _generic(b, v)
    return 0


def pack_rows(rows, bytes head=b""):
    """``head``, then ``rows`` (a list of rows) as one msgpack array: ``head + msgpack.packb(rows)``."""
    cdef Buf b
    cdef Py_ssize_t i, n
    cdef object row
    if type(rows) is not list:
        return head + _pack(rows)
    b.cap = 64 + PyBytes_GET_SIZE(head) + 128 * len(<list>rows)
    b.p = <char *>PyMem_Malloc(b.cap)
    if b.p == NULL:
        raise MemoryError()
    b.n = 0
    try:
        memcpy(b.p, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
        b.n = PyBytes_GET_SIZE(head)
        _head(&b, len(<list>rows), 0x90, 16, 0xDC, 0xDD)
        for row in <list>rows:
            if type(row) is tuple:
                n = len(<tuple>row)
                _head(&b, n, 0x90, 16, 0xDC, 0xDD)
                for i in range(n):
                    _value(&b, (<tuple>row)[i])
            elif type(row) is list:  # the flow table's rows (shared/flowevents.py)
                n = len(<list>row)
                _head(&b, n, 0x90, 16, 0xDC, 0xDD)
                for i in range(n):
                    _value(&b, (<list>row)[i])
            else:
                _generic(&b, row)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)
