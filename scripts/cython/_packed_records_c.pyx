# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of services/flowtracker/packed_records.py, written by hand: it reads the packed
records through C pointers.

``refs_of`` checks a body exactly as shared/packed.unpack_records does (same errors, same app
maps) and makes one 6-tuple per record instead of a 13-tuple and its fields: 0.166 -> 0.068 CPU s
made and freed for the 5x bench capture's 917k records (docs/benchmarks.md, 2026-12-04 (2)).

``add_records`` is FlowTable.add's per-record loop (services/flowtracker/table.py
``_add_records``) over references, line for line: the fields are read in the body, the five that
find the previous record's flow are compared as C integers and bytes, and Python objects are
made only for what the table's own methods are handed (a new flow, a TCP flag, an application
map). Record tuples in the batch go to ``table.add`` as they are. tests/test_packed_records.py
checks that this and the reference (references expanded, then ``table.add``) give the same flow
events, counters and flows on the corpus, the bench capture and damaged bodies.
"""

import sys
from collections import OrderedDict
from heapq import heappush

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_FromDouble
from cpython.long cimport PyLong_FromLong, PyLong_FromLongLong, PyLong_FromSsize_t, PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from packed_layout cimport DST16, HEAD_SIZE, RECORDS_MAGIC, REC_SIZE, SRC16, PyFloat_Unpack8
from packed_layout cimport app_map, checked_count, record_end
from packed_layout cimport get_le as _get

import msgpack

from services.flowtracker import table as _table
from services.flowtracker import tcp_state
from services.flowtracker.packed_records import REF

# the flow table's per-flow state slots (services/flowtracker/table.py), checked below
cdef enum:
    KEY = 1
    INIT_FIRST = 8
    LAST = 11
    POUT = 12
    BOUT = 13
    PIN = 14
    BIN = 15
    STATE = 20
    IDLE = 22
    LRU = 23
    NEXT_UPD = 24
    DIRTY = 26
    ALIVE = 32

assert (_table.KEY, _table.INIT_FIRST, _table.LAST, _table.POUT, _table.BOUT, _table.PIN, _table.BIN) == (
    KEY, INIT_FIRST, LAST, POUT, BOUT, PIN, BIN
)
assert (_table.STATE, _table.IDLE, _table.LRU, _table.NEXT_UPD, _table.DIRTY, _table.ALIVE) == (
    STATE, IDLE, LRU, NEXT_UPD, DIRTY, ALIVE
)

_unpackb = msgpack.unpackb
_move_to_end = OrderedDict.move_to_end
_is_new_connection = tcp_state.is_new_connection
cdef object _REF = REF
cdef double _INF = float("inf")


cdef inline void _set(tuple t, Py_ssize_t i, object v):
    Py_INCREF(v)
    PyTuple_SET_ITEM(t, i, v)


def refs_of(body):
    """The references of a packed body's records; ValueError as shared/packed.unpack_records."""
    cdef Py_ssize_t count = checked_count(body, RECORDS_MAGIC, REC_SIZE + 8, "records")
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body), o = HEAD_SIZE, i, end, app_at, app_len
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef tuple t
    cdef list out = []
    for i in range(count):
        end = record_end(p, o, size, &app_at, &app_len)
        t = PyTuple_New(6)
        _set(t, 0, PyLong_FromUnsignedLongLong(_get(p + o + 1, 8)))
        _set(t, 1, PyFloat_FromDouble(PyFloat_Unpack8(<const char *>(p + o + 9), 1)))
        _set(t, 2, _REF)
        _set(t, 3, body)
        _set(t, 4, PyLong_FromSsize_t(o))
        _set(t, 5, app_map(_unpackb, body, app_at, app_len) if app_at >= 0 else None)
        out.append(t)
        o = end
    if o != size:
        raise ValueError("packed records: bytes after the last record")
    return out


cdef inline bint _is_ref(object r) noexcept:
    return (
        type(r) is tuple
        and PyTuple_GET_SIZE(r) == 6
        and <object>PyTuple_GET_ITEM(r, 2) is _REF
        and type(<object>PyTuple_GET_ITEM(r, 3)) is bytes
    )


cdef inline bint _same_ends(const unsigned char *a, Py_ssize_t la, long pa, const unsigned char *b,
                            Py_ssize_t lb, long pb, const unsigned char *c, Py_ssize_t lc, long pc,
                            const unsigned char *d, Py_ssize_t ld, long pd) noexcept:
    """Endpoints (a, pa) -> (b, pb) are (c, pc) -> (d, pd): addresses of ``l*`` bytes, ports."""
    return (
        pa == pc and pb == pd and la == lc and lb == ld
        and memcmp(a, c, la) == 0 and memcmp(b, d, lb) == 0
    )


def add_records(table, records):
    """``table.add`` for a batch of references and record tuples, in their order."""
    cdef list batch = records if type(records) is list else list(records)
    cdef Py_ssize_t i = 0, n = len(batch), start
    while i < n:
        start = i
        if _is_ref(batch[i]):
            while i < n and _is_ref(batch[i]):
                i += 1
            table.records += _add_refs(table, batch, start, i)
        else:
            while i < n and not _is_ref(batch[i]):
                i += 1
            table.add(batch[start:i])


cdef Py_ssize_t _add_refs(table, list batch, Py_ssize_t start, Py_ssize_t end) except -1:
    """table.py ``_add_records`` over the references ``batch[start:end]``; how many were looked at."""
    flows = table.flows
    updates = table.updates
    nxt = table._n.__next__
    arrive = table._arrive
    due = table._due
    tcp = table._tcp
    app_fields = table._app
    owner = sys.modules[type(table).__module__]  # the table's module, compiled or not: its _seqs
    seqs = owner._seqs
    established = owner.ESTABLISHED
    cdef dict flow_map = flows
    cdef list st
    cdef object prev = None  # a flow's state list, or None
    cdef object prev_body = None  # keeps prev_src_p and prev_dst_p valid
    cdef const unsigned char *prev_src_p = NULL
    cdef const unsigned char *prev_dst_p = NULL
    cdef Py_ssize_t prev_ls = 0, prev_ld = 0
    cdef long prev_sport = 0, prev_dport = 0, prev_proto = 0
    cdef bint prev_fwd = False, fwd, out
    # table.py _add_records: the previous record's flow is last in its LRU once that record was
    # handled, so a record of the same flow skips the move (the flow table's loop over
    # sv-merged's records in one process: 0.127 -> 0.119 CPU s, medians of 5 alternations)
    cdef bint prev_at_end = False, at_end
    cdef int same
    cdef Py_ssize_t i, o, ls, ld, n = 0
    cdef const unsigned char *p
    cdef const unsigned char *src_p
    cdef const unsigned char *dst_p
    cdef int kind
    cdef long proto, sport, dport, flags, frag
    cdef uint64_t wl, pl
    cdef int64_t seq
    cdef double t, last, idle, upd
    cdef tuple ref
    for i in range(start, end):
        ref = <tuple>batch[i]
        body = <object>PyTuple_GET_ITEM(ref, 3)
        o = <Py_ssize_t>(<object>PyTuple_GET_ITEM(ref, 4))
        app = <object>PyTuple_GET_ITEM(ref, 5)
        ts = <object>PyTuple_GET_ITEM(ref, 1)
        p = <const unsigned char *>PyBytes_AS_STRING(body) + o
        kind = p[0]
        t = PyFloat_Unpack8(<const char *>(p + 9), 1)
        wl = _get(p + 17, 4)
        proto = p[21]
        sport = <long>_get(p + 22, 2)
        dport = <long>_get(p + 24, 2)
        flags = <long>_get(p + 26, 2)
        pl = _get(p + 28, 4)
        frag = p[32]
        seq = <int64_t>_get(p + 33, 8)
        ls = 16 if kind & SRC16 else 4
        ld = 16 if kind & DST16 else 4
        src_p = p + REC_SIZE
        dst_p = src_p + ls
        src = dst = None
        n += 1
        at_end = prev_at_end
        prev_at_end = False
        try:
            if frag:
                # every fragment of a datagram counts in one portless flow of its address pair
                sport = dport = flags = 0
            # the previous record's flow, either way (table.py: 87% of records on sv-merged)
            same = 0
            if prev is not None and proto == prev_proto and (<list>prev)[ALIVE]:
                if _same_ends(src_p, ls, sport, dst_p, ld, dport, prev_src_p, prev_ls, prev_sport,
                              prev_dst_p, prev_ld, prev_dport):
                    same = 1
                elif _same_ends(src_p, ls, sport, dst_p, ld, dport, prev_dst_p, prev_ld, prev_dport,
                                prev_src_p, prev_ls, prev_sport):
                    same = -1
            if same:
                st = <list>prev
                fwd = prev_fwd if same > 0 else not prev_fwd
            else:
                at_end = False
                src = PyBytes_FromStringAndSize(<const char *>src_p, ls)
                dst = PyBytes_FromStringAndSize(<const char *>dst_p, ld)
                if src < dst or (src == dst and sport < dport):
                    key = (PyLong_FromLong(proto), src, PyLong_FromLong(sport), dst, PyLong_FromLong(dport))
                    fwd = True
                else:
                    key = (PyLong_FromLong(proto), dst, PyLong_FromLong(dport), src, PyLong_FromLong(sport))
                    fwd = False
                found = flow_map.get(key)
                if found is None:
                    prev = arrive(None, key, fwd, ts, PyLong_FromUnsignedLongLong(wl), PyLong_FromLong(proto),
                                  src, dst, PyLong_FromLong(sport), PyLong_FromLong(dport),
                                  PyLong_FromLong(flags), app, PyLong_FromUnsignedLongLong(pl),
                                  PyLong_FromLongLong(seq))
                    prev_body, prev_src_p, prev_dst_p, prev_ls, prev_ld = body, src_p, dst_p, ls, ld
                    prev_sport, prev_dport, prev_proto, prev_fwd = sport, dport, proto, fwd
                    prev_at_end = True
                    continue
                st = <list>found
                prev = st
                prev_body, prev_src_p, prev_dst_p, prev_ls, prev_ld = body, src_p, dst_p, ls, ld
                prev_sport, prev_dport, prev_proto, prev_fwd = sport, dport, proto, fwd
            last = st[LAST]
            idle = st[IDLE]
            if t - last > idle or (
                flags & 2 and proto == 6 and _is_new_connection(st[STATE], PyLong_FromLong(flags))
            ):
                if src is None:
                    src = PyBytes_FromStringAndSize(<const char *>src_p, ls)
                    dst = PyBytes_FromStringAndSize(<const char *>dst_p, ld)
                prev = arrive(st, st[KEY], fwd, ts, PyLong_FromUnsignedLongLong(wl), PyLong_FromLong(proto),
                              src, dst, PyLong_FromLong(sport), PyLong_FromLong(dport), PyLong_FromLong(flags),
                              app, PyLong_FromUnsignedLongLong(pl), PyLong_FromLongLong(seq))
                prev_at_end = True
                continue
            upd = st[NEXT_UPD]
            if t >= upd:
                due(st, ts)
            out = fwd == (st[INIT_FIRST] is True)
            if proto == 6:
                if flags & 7 or st[STATE] is not established:
                    tcp(st, PyLong_FromLong(flags), out, ts)
                if pl:
                    # data on a SYN follows it; in Python ints, as the reference adds them
                    seqs(st, out, PyLong_FromLongLong(seq) + ((flags >> 1) & 1), PyLong_FromUnsignedLongLong(pl))
            if out:
                st[BOUT] += PyLong_FromUnsignedLongLong(wl)
                st[POUT] += 1
            else:
                st[BIN] += PyLong_FromUnsignedLongLong(wl)
                st[PIN] += 1
            if t > last:
                st[LAST] = ts
            if not at_end:
                # the flow's own key: its bytes hash once, and the LRU finds it by identity
                _move_to_end(st[LRU], st[KEY])
            prev_at_end = True
            if not st[DIRTY]:
                st[DIRTY] = True
                if st[NEXT_UPD] != _INF:  # updates off: no timer to keep
                    heappush(updates, (st[NEXT_UPD], nxt(), st))
            if app is not None:
                app_fields(st, app, ts, False)
        except (TypeError, ValueError, IndexError, KeyError):
            # a record the table refuses (a NaN time, ...): counted, as the reference counts it
            table.bad_records += 1
    return n
