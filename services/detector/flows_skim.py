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

import math
import struct
from typing import Any

import msgpack

from services.detector.events import inbound_time, parse
from shared.flowevents import EV_END, EV_START, EV_UPDATE, FIELDS, INDEX
from shared.frames import FRAME_VERSION, FrameType

MAX_DEPTH = 32  # msgpack's own limit is higher: deeper frames take the general path

# a FLOWS frame's first bytes: an array of five, [type, version, sender, seq, body]
_HEAD = msgpack.packb((FrameType.FLOWS, FRAME_VERSION, 0, 0, 0))[:-3]
_ROW_LEN = len(FIELDS)
_ROW_HEAD = msgpack.packb((None,) * _ROW_LEN)[:-_ROW_LEN]  # an array header of one row
_EV, _TS, _OUT = INDEX["ev"], INDEX["ts"], INDEX["outbound"]
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


def _inbound_time(p: Any, buf: bytes, pos: int, end: int) -> tuple[float, int] | None:
    """(time, end) of the row at ``pos`` when it is an inbound flow's event in the flow-tracker's
    own form; None when the row must be unpacked (outbound, another form, or damaged)."""
    if not _at(p, pos, end, _ROW_HEAD):
        return None
    pos += len(_ROW_HEAD)
    ts = math.nan
    for k in range(_ROW_LEN):
        if k == _EV:
            if _at(p, pos, end, _KIND_UPDATE):
                pos += len(_KIND_UPDATE)
            elif _at(p, pos, end, _KIND_START):
                pos += len(_KIND_START)
            elif _at(p, pos, end, _KIND_END):
                pos += len(_KIND_END)
            else:
                return None
            continue
        if k == _TS:
            if pos + 9 > end or p[pos] != 0xCB:
                return None
            ts = _f64(buf, pos + 1)[0]
            if ts != ts:
                return None  # NaN: the general rules count it as bad
            pos += 9
            continue
        if k == _OUT and pos < end and p[pos] == 0xC3:
            return None  # outbound: parsed whole
        pos = _skip(p, pos, end, 1)
        if pos < 0:
            return None
    return ts, pos


def scan(buf: bytes, watermark: float) -> tuple[str, int, tuple[list, int, int, int]] | None:
    """``(sender, seq, events.scan(rows, watermark))`` of a FLOWS frame, read in place; None
    when frames.decode and events.scan must take it (see the module docstring)."""
    p = buf
    end = len(buf)
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
        rows = b & 0x0F
        pos += 1
    elif b == 0xDC or b == 0xDD:
        size = 2 if b == 0xDC else 4
        rows = _len(p, pos + 1, size, end)
        if rows < 0:
            return None
        pos += 1 + size
    else:
        return None  # not an array: a bad frame, counted by the general path
    # events.scan's rules, row by row (an inbound row may arrive as its time only)
    items: list = []
    taken = late = bad = 0
    run_high = -math.inf
    for _ in range(rows):
        fast = _inbound_time(p, buf, pos, end)
        if fast is not None:
            ts, pos = fast
        else:
            stop = _skip(p, pos, end, 0)
            if stop < 0:
                return None
            try:
                raw = msgpack.unpackb(buf[pos:stop], raw=False, use_list=False, strict_map_key=False)
            except Exception:
                return None
            pos = stop
            found = inbound_time(raw)
            if found is None:
                ev = parse(raw)
                if ev is None:
                    bad += 1
                    continue
                if run_high != -math.inf:
                    items.append(run_high)
                    run_high = -math.inf
                taken += 1
                items.append((ev, raw))
                if ev.ts > watermark:
                    watermark = ev.ts
                continue
            ts = found
        taken += 1
        if ts < watermark:
            late += 1
        else:
            watermark = ts
        if ts > run_high:
            run_high = ts
    if pos != end:
        return None  # bytes after the frame: msgpack refuses it
    if run_high != -math.inf:
        items.append(run_high)
    return sender, seq, (items, taken, late, bad)


from shared.compiled import adopt  # noqa: E402 - bound last: the twin replaces the function above

adopt(globals(), ("scan",))
