"""A FLOWS frame read in place: the detector unpacks only the rows it parses.

Of an inbound flow's event the detector needs only its kind and packet time (events.scan); 90% of
the bench capture's rows are inbound. Unpacking the whole frame made a tuple, a float and a
dozen strings of each of them: about 0.1 CPU s of the detector's 0.5 on the 5x bench capture.
``scan`` walks the frame's msgpack bytes instead. An inbound row whose kind and time are in the
form the flow-tracker writes them (``ev`` a fixstr, ``ts`` a float64) gives its time without
becoming objects; every other row is unpacked on its own, as frames.decode would have, and goes
through events.scan's rules. The result is exactly events.scan's for the decoded frame.

It is None whenever the general path must decide: not a FLOWS frame of this version, a header
frames.decode would refuse, or anything msgpack would refuse or this walk does not follow (a
reserved byte, bytes cut short or left over, invalid UTF-8, an ext type, a map key that is a
container, nesting deeper than MAX_DEPTH). The walk is compiled (shared/compiled.py, its C types
in scripts/cython/_flows_skim_c.pxd); tests/test_flows_skim.py holds both paths to the same
answers on every corpus capture's events and on damaged frames.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from services.detector.events import scan_rows
from shared.flowevents import EV_END, EV_START, EV_UPDATE, FIELDS, INDEX
from shared.frames import FRAME_VERSION, FrameType

MAX_DEPTH = 32  # msgpack's own limit is higher: deeper frames take the general path

# a FLOWS frame's first bytes: an array of five, [type, version, sender, seq, body]
_HEAD = msgpack.packb((FrameType.FLOWS, FRAME_VERSION, 0, 0, 0))[:-3]
_ROW_LEN = len(FIELDS)
_ROW_HEAD = msgpack.packb((None,) * _ROW_LEN)[:-_ROW_LEN]  # an array header of one row
_EV, _TS, _OUT = INDEX["ev"], INDEX["ts"], INDEX["outbound"]
# a flow's identity: the fields from proto to first, which never change over its events
_PROTO, _FIRST, _SRC, _DST = INDEX["proto"], INDEX["first"], INDEX["src"], INDEX["dst"]
_IDENTITY = ("proto", "ipv", "src", "sport", "dst", "dport", "outbound", "first")
assert FIELDS[_PROTO : _FIRST + 1] == _IDENTITY and _TS < _PROTO  # the walk meets them in this order
_pack_identity = msgpack.Packer(use_bin_type=True, autoreset=True).pack  # as frames.encode packs
_IDENTITY_HEAD = len(msgpack.packb(_IDENTITY)) - len(b"".join(msgpack.packb(f) for f in _IDENTITY))
# the kinds of event as the flow-tracker packs them (fixstr)
_KIND_START, _KIND_UPDATE, _KIND_END = (msgpack.packb(k) for k in (EV_START, EV_UPDATE, EV_END))
_f64 = struct.Struct(">d").unpack_from


def _str(p: Any, pos: int, n: int, end: int) -> int:
    """Past a string of ``n`` bytes at ``pos``, -1 when cut short or not UTF-8 (as unpacking it)."""
    stop = pos + n
    if stop > end:
        return -1
    i = pos
    while i < stop:
        if p[i] >= 0x80:  # not plain ASCII: let the codec judge the rest
            try:
                bytes(p[pos:stop]).decode("utf-8")
            except UnicodeDecodeError:
                return -1
            return stop
        i += 1
    return stop


def _len(p: Any, pos: int, size: int, end: int) -> int:
    """A big-endian length of ``size`` bytes at ``pos``, -1 when cut short."""
    if pos + size > end:
        return -1
    n = 0
    for i in range(pos, pos + size):
        n = (n << 8) | p[i]
    return n


def _items(p: Any, pos: int, n: int, end: int, depth: int) -> int:
    """Past ``n`` objects from ``pos``."""
    if depth >= MAX_DEPTH:
        return -1
    while n > 0 and pos >= 0:
        pos = _skip(p, pos, end, depth + 1)
        n -= 1
    return pos


def _pairs(p: Any, pos: int, n: int, end: int, depth: int) -> int:
    """Past ``n`` key/value pairs from ``pos``; a key must be a scalar (a container as a key is
    left to msgpack, which may refuse it)."""
    if depth >= MAX_DEPTH:
        return -1
    while n > 0 and pos >= 0:
        if pos >= end:
            return -1
        b = p[pos]
        if (0x80 <= b <= 0x9F) or b in (0xDC, 0xDD, 0xDE, 0xDF):
            return -1
        pos = _skip(p, pos, end, depth + 1)
        if pos >= 0:
            pos = _skip(p, pos, end, depth + 1)
        n -= 1
    return pos


def _skip(p: Any, pos: int, end: int, depth: int) -> int:
    """Past the msgpack object at ``pos``; -1 for anything the walk leaves to msgpack."""
    if pos < 0 or pos >= end:
        return -1
    b = p[pos]
    if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
        return pos + 1  # fixint, nil, false, true
    if 0xA0 <= b <= 0xBF:
        return _str(p, pos + 1, b & 0x1F, end)
    if 0x90 <= b <= 0x9F:
        return _items(p, pos + 1, b & 0x0F, end, depth)
    if 0x80 <= b <= 0x8F:
        return _pairs(p, pos + 1, b & 0x0F, end, depth)
    if b == 0xCB or b == 0xCF or b == 0xD3:  # float64, uint64, int64
        stop = pos + 9
    elif b == 0xCA or b == 0xCE or b == 0xD2:
        stop = pos + 5
    elif b == 0xCD or b == 0xD1:
        stop = pos + 3
    elif b == 0xCC or b == 0xD0:
        stop = pos + 2
    elif b == 0xD9 or b == 0xDA or b == 0xDB:  # str 8/16/32
        size = 1 if b == 0xD9 else (2 if b == 0xDA else 4)
        n = _len(p, pos + 1, size, end)
        return -1 if n < 0 else _str(p, pos + 1 + size, n, end)
    elif b == 0xC4 or b == 0xC5 or b == 0xC6:  # bin 8/16/32
        size = 1 if b == 0xC4 else (2 if b == 0xC5 else 4)
        n = _len(p, pos + 1, size, end)
        stop = -1 if n < 0 else pos + 1 + size + n
    elif b == 0xDC or b == 0xDD:  # array 16/32
        size = 2 if b == 0xDC else 4
        n = _len(p, pos + 1, size, end)
        return -1 if n < 0 else _items(p, pos + 1 + size, n, end, depth)
    elif b == 0xDE or b == 0xDF:  # map 16/32
        size = 2 if b == 0xDE else 4
        n = _len(p, pos + 1, size, end)
        return -1 if n < 0 else _pairs(p, pos + 1 + size, n, end, depth)
    else:
        return -1  # 0xc1 (never used) and the ext types
    return stop if stop <= end else -1


def _at(p: Any, pos: int, end: int, what: bytes) -> bool:
    """True when the bytes at ``pos`` are ``what``."""
    n = len(what)
    if pos + n > end:
        return False
    w = what
    for i in range(n):  # noqa: SIM110 - a loop over C bytes in the twin, not a generator
        if p[pos + i] != w[i]:
            return False
    return True


# what _inbound read of the last row it took (module state, not a tuple a row: C variables in the
# twin, so that a row read in place makes no object it does not hand out)
_row_ev: str = EV_UPDATE
_row_ts: float = 0.0
_row_key: Any = None


def _inbound(p: Any, buf: bytes, pos: int, end: int, want_key: bool) -> int:
    """The end of the row at ``pos`` when it is an inbound flow's event in the flow-tracker's own
    form, its kind, time and (when ``want_key``) identity bytes left in ``_row_ev``, ``_row_ts``,
    ``_row_key``; -1 when the row must be unpacked (outbound, another form, or damaged)."""
    global _row_ev, _row_ts, _row_key
    if not _at(p, pos, end, _ROW_HEAD):
        return -1
    pos += len(_ROW_HEAD)
    key_at = 0
    for k in range(_ROW_LEN):
        if k == _EV:
            if _at(p, pos, end, _KIND_UPDATE):
                _row_ev = EV_UPDATE
                pos += len(_KIND_UPDATE)
            elif _at(p, pos, end, _KIND_START):
                _row_ev = EV_START
                pos += len(_KIND_START)
            elif _at(p, pos, end, _KIND_END):
                _row_ev = EV_END
                pos += len(_KIND_END)
            else:
                return -1
            continue
        if k == _TS:
            if pos + 9 > end or p[pos] != 0xCB:
                return -1
            ts = _f64(buf, pos + 1)[0]
            if ts != ts:
                return -1  # NaN: the general rules count it as bad
            _row_ts = ts
            pos += 9
            continue
        if k == _OUT and pos < end and p[pos] == 0xC3:
            return -1  # outbound: parsed whole
        if k == _PROTO:
            key_at = pos
        elif (k == _SRC or k == _DST) and not (pos < end and (0xA0 <= p[pos] <= 0xBF or p[pos] == 0xD9)):
            return -1  # an address that is not text: the row is unusable, as unpacked
        pos = _skip(p, pos, end, 1)
        if pos < 0:
            return -1
        if k == _FIRST and want_key:
            _row_key = p[key_at:pos]
    return pos


def _open(p: Any, buf: bytes, end: int) -> tuple[str, int, int, int] | None:
    """``(sender, seq, rows, offset of the first row)`` of a FLOWS frame's header, or None."""
    if not _at(p, 0, end, _HEAD):
        return None
    pos = len(_HEAD)
    seq_end = _skip(p, _skip(p, pos, end, 1), end, 1)  # sender, seq
    if seq_end < 0:
        return None
    try:
        sender, seq = msgpack.unpackb(b"\x92" + buf[pos:seq_end], raw=False, use_list=False, strict_map_key=False)
    except Exception:  # what the walk passed unpacks; should it not, msgpack has the last word
        return None
    if not isinstance(sender, str) or not isinstance(seq, int):
        return None
    pos = seq_end
    if pos >= end:
        return None
    b = p[pos]
    if 0x90 <= b <= 0x9F:
        return sender, seq, b & 0x0F, pos + 1
    if b == 0xDC or b == 0xDD:
        size = 2 if b == 0xDC else 4
        rows = _len(p, pos + 1, size, end)
        return None if rows < 0 else (sender, seq, rows, pos + 1 + size)
    return None  # not an array: a bad frame, counted by the general path


def _unpack(buf: bytes, pos: int, stop: int) -> tuple[bool, Any]:
    """(True, the object) of the bytes the walk passed, as frames.decode unpacks them."""
    try:
        return True, msgpack.unpackb(buf[pos:stop], raw=False, use_list=False, strict_map_key=False)
    except Exception:  # what the walk passed unpacks; should it not, msgpack has the last word
        return False, None


def _walk(buf: bytes, live: bool) -> tuple[str, int, list] | None:
    """The frame's rows read in place: ``(sender, seq, items)``, None for the general path.

    Each inbound flow's event in the flow-tracker's own form is, in ``items``, its time alone
    (for ``scan``), or with ``live`` the four entries ``key, ev, ts, packed``; every other row is
    itself, unpacked as frames.decode unpacks it (with ``live``: ``None, row, None, None``)."""
    p = buf
    end = len(buf)
    head = _open(p, buf, end)
    if head is None:
        return None
    sender, seq, rows, pos = head
    items: list = []
    for _ in range(rows):
        stop = _inbound(p, buf, pos, end, live)
        if stop >= 0:
            if live:
                items += (_row_key, _row_ev, _row_ts, p[pos:stop])
            else:
                items.append(_row_ts)
        else:
            stop = _skip(p, pos, end, 0)
            if stop < 0:
                return None
            ok, raw = _unpack(buf, pos, stop)
            if not ok or (not live and type(raw) is float):
                return None  # a float among the rows: scan_rows would take it for a time
            if live:
                items += (None, raw, None, None)
            else:
                items.append(raw)
        pos = stop
    if pos != end:
        return None  # bytes after the frame: msgpack refuses it
    return sender, seq, items


def scan(buf: bytes, watermark: float) -> tuple[str, int, tuple[list, int, int, int]] | None:
    """``(sender, seq, events.scan(rows, watermark))`` of a FLOWS frame, read in place; None
    when frames.decode and events.scan must take it (see the module docstring)."""
    walked = _walk(buf, False)
    if walked is None:
        return None
    return walked[0], walked[1], scan_rows(walked[2], watermark, True)


def live_rows(buf: bytes) -> tuple[str, int, list] | None:
    """``(sender, seq, items)`` of a FLOWS frame for the live view, read in place; None when
    frames.decode must take it. ``items`` holds four entries a row, in order (a flat list: no
    tuple a row): ``key, ev, ts, packed`` for an inbound flow's event in the flow-tracker's own
    form (``key`` as identity() gives it, ``packed`` the row's own bytes, unpacked only if the
    live view writes it), else ``None, row, None, None`` with the row as frames.decode gives it."""
    return _walk(buf, True)


def identity(row: tuple) -> bytes:
    """A flow's identity fields (5-tuple, family, direction, first packet time) packed as the
    flow-tracker packs them: the key live_rows gives an inbound row, for a row already unpacked."""
    return _pack_identity(row[_PROTO : _FIRST + 1])[_IDENTITY_HEAD:]


from shared.compiled import adopt  # noqa: E402 - bound last: the twin replaces the function above

adopt(globals(), ("scan", "live_rows", "identity"))
