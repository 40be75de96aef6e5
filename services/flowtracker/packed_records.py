"""The decoders' packed records into the flow table without a tuple per record.

A packed RECORDS body (shared/packed.py) unpacked into record tuples cost the flow-tracker a
13-item tuple and eight to ten objects per record, made, merged, read once by the flow table and
freed: a fifth of its CPU on the 5x bench capture. Here each record becomes a reference instead,
``(num, ts, REF, body, offset, app)``: the capture-order merge (merge.py) reads only its packet
number and time, and ``add_records`` hands it to the flow table, whose compiled twin reads the
fields in place in the body. Records that came as lists stay tuples and go to the table as they
are; a list can hold both.

This module is the reference: references are expanded into the record tuples
(``record_at``) and given to ``FlowTable.add``. ``scripts/cython/_packed_records_c.pyx`` is its
compiled twin (written by hand: it reads the body through C pointers); tests/test_packed_records.py
checks that both give the same flow events and counters on the corpus, the bench capture and
damaged bodies. The flow-tracker uses references only when the twin runs and it is the only
flow-tracker (with several, records carrying DNS answers for another's flows are looked into
first; service.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from shared.packed import _REC, HEAD_SIZE, REC_SIZE, unpack_records

REF = object()  # marks a reference: no record that came as a list can hold this very object
_LEN = struct.Struct("<I")


def refs_of(body: bytes) -> list[tuple]:
    """A packed body's records as references; ValueError as ``unpack_records`` raises it."""
    records = unpack_records(body)  # the same checks, the same errors, the same app maps
    size = len(body)
    out = []
    o = HEAD_SIZE
    for rec in records:
        kind = body[o]
        start = o
        o += REC_SIZE + (16 if kind & 1 else 4) + (16 if kind & 2 else 4)
        if kind & 4:
            (la,) = _LEN.unpack_from(body, o)
            o += 4 + la
        out.append((rec[0], rec[1], REF, body, start, rec[12]))
    assert o == size
    return out


def record_at(ref: tuple) -> tuple:
    """The record tuple a reference stands for."""
    _num, _ts, _ref, body, o, app = ref
    kind, num, ts, wl, proto, sport, dport, flags, pl, frag, seq = _REC.unpack_from(body, o)
    o += REC_SIZE
    ls = 16 if kind & 1 else 4
    ld = 16 if kind & 2 else 4
    return (num, ts, wl, proto, body[o : o + ls], body[o + ls : o + ls + ld], sport, dport, flags, pl, frag, seq, app)


def add_records(table, records: Iterable[tuple]) -> None:
    """``table.add`` for a batch of references and record tuples, in their order."""
    table.add([record_at(r) if len(r) == 6 and r[2] is REF else r for r in records])


# The compiled twin (written by hand, scripts/cython/_packed_records_c.pyx) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("refs_of", "add_records"))
