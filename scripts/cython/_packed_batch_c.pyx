# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of services/decoder/packed_batch.py, written by hand (C pointers into the packed
bodies): a PACKETS body in, a RECORDS body out, with no tuple or integer object per packet.

The common path is done here, read in place: Ethernet (one VLAN tag at most), IPv4 or IPv6 (one
extension header skipped as fastpath.decode_batch skips it), TCP, UDP, ICMP and any other
protocol number, each with exactly fastpath.decode_batch's length rules and its calls to the
application-layer inspector. Every packet this path does not take as it is (another link
layer, a stack of VLAN tags, ARP, an IPv6 extension chain, a tunnel or VXLAN port, a fragmented TCP or UDP
header, a header that fails a check: what decode_batch would count as malformed) is handed to
decode_batch alone, in its place, without the batch-end ``expire``; the batch then ends with one
``expire`` at its last packet's time, as decode_batch's does. tests/test_packed_batch.py compares
this with the reference on every corpus capture and on damaged packets.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_FromDouble
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from packed_layout cimport (
    DST16, HAS_APP, HEAD_SIZE, PACKETS_MAGIC, PKT_SIZE, RECORDS_MAGIC, REC_SIZE, SRC16, VERSION,
    PyFloat_Pack8, PyFloat_Unpack8,
)
from packed_layout cimport checked_count
from packed_layout cimport get_le as _get
from packed_layout cimport put_le as _put

import msgpack

from services.decoder import ipv6, link, tunnels, vxlan
from services.decoder.fastpath import decode_batch
from services.decoder.ipv6 import EXTENSION_HEADERS
from shared import packed

cdef enum:
    FRAG_NONE = 0
    FRAG_FIRST = 1
    FRAG_LATER = 2
    ICMP_HDR_MIN = 4  # services/decoder/icmp.HDR_MIN
    GENEVE_PORT = 6081  # services/decoder/tunnels.GENEVE_PORT
    MAX_EXT_HEADERS = 16  # services/decoder/ipv6.MAX_EXT_HEADERS

_pack_app = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_PLACEHOLDER = b"\xc0"  # msgpack nil, for a record whose app map the layout cannot carry
cdef const unsigned char *_ZEROS = b"\0\0\0\0"  # the stand-in's addresses
_VXLAN_PORTS = vxlan.PORTS
_result = None  # services.decoder.packed_batch.PackedBatch
_IP_TUNNELS = tunnels.IP_TUNNEL_PROTOS
assert tunnels.GENEVE_PORT == GENEVE_PORT and vxlan.MAX_NESTING > 0 and tunnels.MAX_NESTING > 0
assert link.VLAN_TYPES == {0x8100, 0x88A8, 0x9100}
assert ipv6.MAX_EXT_HEADERS == MAX_EXT_HEADERS and EXTENSION_HEADERS == {0, 43, 44, 51, 60}


cdef inline unsigned int _be16(const unsigned char *p) noexcept:
    return (p[0] << 8) | p[1]


cdef inline bint _is_ext(int p) noexcept:
    """services/decoder/ipv6.EXTENSION_HEADERS: hop-by-hop, routing, fragment, AH, destination options."""
    return p == 0 or p == 43 or p == 44 or p == 51 or p == 60


cdef Py_ssize_t _walk_ext(const unsigned char *d, Py_ssize_t n, Py_ssize_t off, int nxt, Py_ssize_t limit) noexcept:
    """ipv6.walk_ext in C: (upper protocol | fragment state << 8 | its offset << 10), or -1 where
    walk_ext raises (a header cut by the captured bytes or crossing ``limit``, too many headers)."""
    cdef int frag = FRAG_NONE, following, k
    cdef unsigned int offlg
    cdef Py_ssize_t size
    for k in range(MAX_EXT_HEADERS):
        if not _is_ext(nxt):
            return nxt | frag << 8 | off << 10
        if nxt == 44:
            if off + 8 > n:  # ipv6.FRAG_HDR
                return -1
            following = d[off]
            offlg = _be16(d + off + 2)
            size = 8
            if offlg >> 3:
                frag = FRAG_LATER
            elif offlg & 1:
                frag = FRAG_FIRST
        else:
            if off + 2 > n:  # ipv6.EXT_HDR
                return -1
            following = d[off]
            size = (d[off + 1] + 2) << 2 if nxt == 51 else (d[off + 1] + 1) << 3
        if off + size > limit:
            return -1
        off += size
        nxt = following
        if frag == FRAG_LATER:
            return nxt | frag << 8 | off << 10
    return -1


cdef class _Out:
    """The records body being written: a growing bytearray and its write position."""
    cdef bytearray buf
    cdef Py_ssize_t pos
    cdef Py_ssize_t count

    def __cinit__(self, Py_ssize_t hint):
        self.buf = bytearray(HEAD_SIZE + hint)
        self.pos = HEAD_SIZE
        self.count = 0

    cdef unsigned char *room(self, Py_ssize_t need) except NULL:
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self.buf)
        if self.pos + need > have:
            self.buf.extend(bytes(max(need, have)))
        return <unsigned char *>PyByteArray_AS_STRING(self.buf) + self.pos

    cdef int record(self, uint64_t num, double ts, unsigned int wl, int proto, const unsigned char *src,
                    const unsigned char *dst, int alen, unsigned int sport, unsigned int dport,
                    unsigned int flags, unsigned int pl, int frag, int64_t seq, object blob) except -1:
        cdef Py_ssize_t la = PyBytes_GET_SIZE(blob) if blob is not None else 0
        cdef unsigned char *p = self.room(REC_SIZE + 2 * alen + (4 + la if blob is not None else 0))
        p[0] = (SRC16 | DST16 if alen == 16 else 0) | (HAS_APP if blob is not None else 0)
        _put(p + 1, num, 8)
        PyFloat_Pack8(ts, <char *>(p + 9), 1)
        _put(p + 17, wl, 4)
        p[21] = proto
        _put(p + 22, sport, 2)
        _put(p + 24, dport, 2)
        _put(p + 26, flags, 2)
        _put(p + 28, pl, 4)
        p[32] = frag
        _put(p + 33, <uint64_t>seq, 8)
        memcpy(p + REC_SIZE, src, alen)
        memcpy(p + REC_SIZE + alen, dst, alen)
        if blob is not None:
            _put(p + REC_SIZE + 2 * alen, <uint64_t>la, 4)
            memcpy(p + REC_SIZE + 2 * alen + 4, PyBytes_AS_STRING(blob), la)
        self.pos += REC_SIZE + 2 * alen + (4 + la if blob is not None else 0)
        self.count += 1
        return 0

    cdef int packed_records(self, bytes body) except -1:
        """Append the records of a packed body (its header left out)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(body) - HEAD_SIZE
        cdef const unsigned char *q = <const unsigned char *>PyBytes_AS_STRING(body)
        cdef unsigned char *p = self.room(n)
        memcpy(p, q + HEAD_SIZE, n)
        self.pos += n
        self.count += <Py_ssize_t>_get(q + 2, 4)
        return 0

    cdef bytes finish(self):
        cdef unsigned char *p = <unsigned char *>PyByteArray_AS_STRING(self.buf)
        p[0] = RECORDS_MAGIC
        p[1] = VERSION
        _put(p + 2, <uint64_t>self.count, 4)
        return PyBytes_FromStringAndSize(<const char *>p, self.pos)


cdef Py_ssize_t _checked_count(object body) except -1:
    """The packet count of a whole, well-formed PACKETS body; ValueError otherwise, before
    anything is decoded (as the reference, which unpacks the whole body first)."""
    cdef Py_ssize_t count = checked_count(body, PACKETS_MAGIC, PKT_SIZE, "packets")
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body), o = HEAD_SIZE, i
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(body)
    for i in range(count):
        if o + PKT_SIZE > size:
            raise ValueError("packed packets: truncated header")
        o += PKT_SIZE + <Py_ssize_t>_get(p + o + 22, 4)
        if o > size:
            raise ValueError("packed packets: truncated data")
    if o != size:
        raise ValueError("packed packets: bytes after the last packet")
    return count


cdef inline bytes _slice(const unsigned char *d, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b):
    """data[a:b] as Python slices it (b past the end stops at the end; a past b is empty)."""
    if b > n:
        b = n
    if a >= b:
        return b""
    return PyBytes_FromStringAndSize(<const char *>(d + a), b - a)


cdef struct _DoneKey:
    # a directional 5-tuple the inspector answered None for (a finished flow): see _Done
    int proto
    unsigned int sport, dport
    Py_ssize_t alen
    unsigned char src[16]
    unsigned char dst[16]


cdef struct _Done:
    # The last two directional keys ``state_of`` answered None for (both directions of one
    # finished flow, as packets alternate), valid while the inspector's table cannot have changed:
    # only inspect() and decode_batch (which calls it) change it, and either empties this. Of the
    # 45,850 None answers on sv-merged, 43,852 were for the flow the look-up before was for; each
    # one skipped saves two bytes, two ints, a tuple, three hashes and a dict look-up: decode_packed
    # over sv-merged 0.141-0.148 -> 0.131-0.135 CPU s (`scripts/bench_decoder`, docs/benchmarks.md).
    int used  # 0, 1 or 2 slots filled
    int newest  # index of the slot filled last
    _DoneKey slot[2]


cdef inline bint _known_done(_Done *done, int proto, const unsigned char *src_p, const unsigned char *dst_p,
                             Py_ssize_t alen, unsigned int sport, unsigned int dport) noexcept:
    cdef int k
    cdef _DoneKey *s
    for k in range(done.used):
        s = &done.slot[k]
        if (s.proto == proto and s.sport == sport and s.dport == dport and s.alen == alen
                and memcmp(s.src, src_p, alen) == 0 and memcmp(s.dst, dst_p, alen) == 0):
            return True
    return False


cdef inline void _remember_done(_Done *done, int proto, const unsigned char *src_p, const unsigned char *dst_p,
                                Py_ssize_t alen, unsigned int sport, unsigned int dport) noexcept:
    cdef int k = 0 if done.used == 0 else 1 - done.newest
    cdef _DoneKey *s = &done.slot[k]
    s.proto = proto
    s.sport = sport
    s.dport = dport
    s.alen = alen
    memcpy(s.src, src_p, alen)
    memcpy(s.dst, dst_p, alen)
    done.newest = k
    if done.used < 2:
        done.used += 1


def decode_packed(body, app=None):
    """As services/decoder/packed_batch.decode_packed (same records, calls and counters)."""
    cdef Py_ssize_t count = _checked_count(body)
    cdef const unsigned char *base = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef Py_ssize_t o = HEAD_SIZE, i, n, off, l4, l4len, total, ihl, hlen, alen, walked
    cdef Py_ssize_t malformed = 0, non_ip = 0, app_errors = 0
    cdef const unsigned char *d
    cdef const unsigned char *src_p
    cdef const unsigned char *dst_p
    cdef uint64_t num
    cdef double ts = 0.0
    cdef unsigned int linktype, wirelen, etype, vhl, fragw, sport, dport, flags, plen, ver
    cdef int proto, frag
    cdef int64_t seq
    cdef Py_ssize_t paylen
    cdef bint fallback
    cdef _Out out = _Out(<Py_ssize_t>(PyBytes_GET_SIZE(body) // 2))
    cdef dict unfit = {}  # record index -> the record (tuple) whose app map the layout cannot carry
    cdef _Done done
    done.used = 0
    done.newest = 0
    inspect = app.inspect if app is not None else None
    state_of = getattr(app, "state_of", None) or {}.get
    vxlan_ports = _VXLAN_PORTS
    ip_tunnels = _IP_TUNNELS
    ts_obj = None
    for i in range(count):
        num = _get(base + o, 8)
        ts = PyFloat_Unpack8(<const char *>(base + o + 8), 1)
        linktype = <unsigned int>_get(base + o + 16, 2)
        wirelen = <unsigned int>_get(base + o + 18, 4)
        n = <Py_ssize_t>_get(base + o + 22, 4)
        d = base + o + PKT_SIZE
        o += PKT_SIZE + n
        ts_obj = None
        fallback = True
        # ---- the common path: every read checked, anything off it falls back ------------------
        if linktype == 1 and n >= 14:
            etype = _be16(d + 12)
            off = 14
            if (etype == 0x8100 or etype == 0x88A8 or etype == 0x9100) and n >= 18:
                # one VLAN tag (link.VLAN_TYPES) before IPv4 or IPv6, as link.locate reads it;
                # other tag stacks, PPPoE, MPLS, ... fall back
                etype = _be16(d + 16)
                off = 18
                if etype != 0x0800 and etype != 0x86DD:
                    etype = 0
            if etype == 0x0800 and off + 20 <= n:
                vhl = d[off]
                total = _be16(d + off + 2)
                fragw = _be16(d + off + 6)
                proto = d[off + 9]
                ihl = (vhl & 15) << 2
                if vhl >> 4 == 4 and ihl >= 20 and total != 0 and total >= ihl and off + ihl <= n:
                    l4 = off + ihl
                    l4len = total - ihl
                    frag = FRAG_NONE
                    if fragw & 0x3FFF:
                        frag = FRAG_LATER if fragw & 0x1FFF else FRAG_FIRST
                    src_p = d + off + 12
                    dst_p = d + off + 16
                    alen = 4
                    fallback = False
            elif etype == 0x86DD and off + 40 <= n:
                ver = d[off]
                plen = _be16(d + off + 4)
                proto = d[off + 6]
                if ver >> 4 == 6 and plen != 0:
                    total = plen + 40
                    l4 = off + 40
                    frag = FRAG_NONE
                    src_p = d + off + 8
                    dst_p = d + off + 24
                    alen = 16
                    fallback = False
                    if _is_ext(proto):
                        # ipv6.walk_ext, as decode_batch runs it (its inline skip of one header
                        # is the same walk); -1: a header past the data or the payload length,
                        # or too many of them, which decode_batch counts as malformed
                        walked = _walk_ext(d, n, l4, proto, off + total)
                        if walked < 0:
                            fallback = True
                        else:
                            proto = walked & 0xFF
                            frag = (walked >> 8) & 3
                            l4 = walked >> 10
                    l4len = off + total - l4
        if not fallback:
            if off + total > wirelen:  # cut by the snaplen: the IP length says how long it was
                wirelen = off + total
            if frag == FRAG_LATER:
                out.record(num, ts, wirelen, proto, src_p, dst_p, alen, 0, 0, 0, l4len, FRAG_LATER, 0, None)
            elif proto == 6:
                if frag or l4 + 20 > n:
                    fallback = True
                else:
                    hlen = (d[l4 + 12] >> 4) << 2
                    if hlen < 20 or hlen > l4len:
                        fallback = True
                    else:
                        sport = _be16(d + l4)
                        dport = _be16(d + l4 + 2)
                        seq = <int64_t>((<uint64_t>_be16(d + l4 + 4) << 16) | _be16(d + l4 + 6))
                        flags = d[l4 + 13]
                        paylen = l4len - hlen
                        found = None
                        if inspect is not None and (paylen or flags & 0x07) and (
                            flags & 0x12 == 0x02 or not _known_done(&done, 6, src_p, dst_p, alen, sport, dport)
                        ):
                            src = PyBytes_FromStringAndSize(<const char *>src_p, alen)
                            dst = PyBytes_FromStringAndSize(<const char *>dst_p, alen)
                            if flags & 0x12 == 0x02 or state_of((src, dst, sport, dport, 6), False) is not None:
                                done.used = 0  # inspect may change the table
                                ts_obj = PyFloat_FromDouble(ts)
                                try:
                                    found = inspect(ts_obj, 6, src, dst, sport, dport, flags, seq,
                                                    _slice(d, n, l4 + hlen, l4 + l4len))
                                except Exception:  # the application layer must never stop the decoder
                                    app_errors += 1
                            else:
                                _remember_done(&done, 6, src_p, dst_p, alen, sport, dport)
                        _emit(out, unfit, num, ts, wirelen, 6, src_p, dst_p, alen, sport, dport, flags,
                              paylen, frag, seq, found)
            elif proto == 17:
                if frag or l4 + 8 > n or l4len < 8:
                    fallback = True
                else:
                    sport = _be16(d + l4)
                    dport = _be16(d + l4 + 2)
                    if dport in vxlan_ports or dport == GENEVE_PORT:
                        fallback = True
                    else:
                        paylen = l4len - 8
                        found = None
                        if inspect is not None and paylen and not _known_done(
                            &done, 17, src_p, dst_p, alen, sport, dport
                        ):
                            src = PyBytes_FromStringAndSize(<const char *>src_p, alen)
                            dst = PyBytes_FromStringAndSize(<const char *>dst_p, alen)
                            if state_of((src, dst, sport, dport, 17), False) is not None:
                                done.used = 0  # inspect may change the table
                                ts_obj = PyFloat_FromDouble(ts)
                                try:
                                    found = inspect(ts_obj, 17, src, dst, sport, dport, 0, 0,
                                                    _slice(d, n, l4 + 8, l4 + l4len))
                                except Exception:  # the application layer must never stop the decoder
                                    app_errors += 1
                            else:
                                _remember_done(&done, 17, src_p, dst_p, alen, sport, dport)
                        _emit(out, unfit, num, ts, wirelen, 17, src_p, dst_p, alen, sport, dport, 0,
                              paylen, frag, 0, found)
            elif proto in ip_tunnels:
                fallback = True
            elif proto == 1 or proto == 58:
                if l4len < ICMP_HDR_MIN or l4 + ICMP_HDR_MIN > n:
                    fallback = True
                else:  # type and code ride in the seq slot (shared/records.py)
                    out.record(num, ts, wirelen, proto, src_p, dst_p, alen, 0, 0, 0, l4len, frag,
                               _be16(d + l4), None)
            else:
                out.record(num, ts, wirelen, proto, src_p, dst_p, alen, 0, 0, 0, l4len, frag, 0, None)
        if fallback:
            # decode_batch on this packet alone, in its place; its batch-end expire comes once, below
            done.used = 0  # it may call inspect, which may change the table
            if ts_obj is None:
                ts_obj = PyFloat_FromDouble(ts)
            wirelen = <unsigned int>_get(base + o - n - PKT_SIZE + 18, 4)  # as received
            res = decode_batch(
                ((num, ts_obj, linktype, wirelen, PyBytes_FromStringAndSize(<const char *>d, n)),), app, 0, False
            )
            malformed += res.malformed
            non_ip += res.non_ip
            app_errors += res.app_errors
            for rec in res.records:
                fitted = packed.pack_records([rec])
                if fitted is None:  # kept as it is; a stand-in holds its place in the body
                    unfit[out.count] = rec
                    out.record(0, 0.0, 0, 0, _ZEROS, _ZEROS, 4, 0, 0, 0, 0, 0, 0, None)
                else:
                    out.packed_records(fitted)
    if app is not None and count:
        try:
            app.expire(PyFloat_FromDouble(ts))
        except Exception:  # the application layer must never stop the decoder
            app_errors += 1
    cdef Py_ssize_t made = out.count
    records = out.finish()
    if unfit:  # as the reference: a record the layout cannot carry sends the batch as a list
        records = packed.unpack_records(records)
        for k, rec in unfit.items():
            records[k] = rec
    global _result
    if _result is None:
        # imported on first use, not at this module's import: packed_batch imports this module
        # (shared/compiled.adopt), and importing it from here first would see it half made
        from services.decoder.packed_batch import PackedBatch as _result
    return _result(records, count, count - malformed, malformed, non_ip, app_errors, made)


cdef int _emit(_Out out, dict unfit, uint64_t num, double ts, unsigned int wl, int proto,
               const unsigned char *src_p, const unsigned char *dst_p, int alen, unsigned int sport,
               unsigned int dport, unsigned int flags, Py_ssize_t pl, int frag, int64_t seq,
               object found) except -1:
    """One TCP or UDP record, with its app map packed when there is one."""
    cdef object blob = None
    if found is not None:
        try:
            blob = _pack_app(found)
        except (TypeError, ValueError, OverflowError):
            blob = None
        if blob is None or PyBytes_GET_SIZE(blob) > 0xFFFFFFFF:
            unfit[out.count] = (
                num, PyFloat_FromDouble(ts), wl, proto, PyBytes_FromStringAndSize(<const char *>src_p, alen),
                PyBytes_FromStringAndSize(<const char *>dst_p, alen), sport, dport, flags, pl, frag, seq, found,
            )
            blob = _PLACEHOLDER
    out.record(num, ts, wl, proto, src_p, dst_p, alen, sport, dport, flags, <unsigned int>pl, frag, seq, blob)
    return 0
