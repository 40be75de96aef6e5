# Types for the detector's in-place FLOWS reader (services/detector/flows_skim.py; Cython reads
# this .pxd beside the copy it compiles). The frame is read through a C pointer and every offset
# is a C integer: the walk over an inbound row's 28 fields then makes no Python object.
import cython

cdef Py_ssize_t MAX_DEPTH, _ROW_LEN, _EV, _TS, _OUT, _PROTO, _FIRST, _SRC, _DST, _IDENTITY_HEAD
cdef bytes _HEAD, _ROW_HEAD, _KIND_START, _KIND_UPDATE, _KIND_END

@cython.locals(stop=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _str(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t end)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _len(const unsigned char *p, Py_ssize_t pos, Py_ssize_t size, Py_ssize_t end)

cdef Py_ssize_t _items(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t end, Py_ssize_t depth)

@cython.locals(b=cython.uint)
cdef Py_ssize_t _pairs(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t end, Py_ssize_t depth)

@cython.locals(b=cython.uint, stop=Py_ssize_t, size=Py_ssize_t, n=Py_ssize_t)
cdef Py_ssize_t _skip(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t depth)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, w="const unsigned char *")
cdef bint _at(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end, bytes what)

cdef object _row_ev, _row_key
cdef double _row_ts

@cython.locals(k=Py_ssize_t, ts=double, key_at=Py_ssize_t)
cdef Py_ssize_t _inbound(const unsigned char *p, bytes buf, Py_ssize_t pos, Py_ssize_t end, bint want_key) except -2

@cython.locals(pos=Py_ssize_t, seq_end=Py_ssize_t, b=cython.uint, size=Py_ssize_t, rows=Py_ssize_t)
cdef object _open(const unsigned char *p, bytes buf, Py_ssize_t end)

cdef tuple _unpack(bytes buf, Py_ssize_t pos, Py_ssize_t stop)

@cython.locals(p="const unsigned char *", end=Py_ssize_t, pos=Py_ssize_t, rows=Py_ssize_t, stop=Py_ssize_t,
               items=list)
cdef object _walk(bytes buf, bint live)

cpdef object scan(bytes buf, double watermark)

cpdef object live_rows(bytes buf)

cpdef bytes identity(tuple row)
