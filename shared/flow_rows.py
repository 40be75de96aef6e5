"""A FLOWS frame's rows packed in one call: the flow-tracker's largest single cost.

Packing the 5x bench capture's 160k flow-event rows (28 values each) with msgpack took about
0.17 CPU s of the flow-tracker's 1.0 (perf, docs/benchmarks.md "2026-12-05 (2)"): its packer
dispatches on each value's type through a general recursive function. The rows hold few kinds
of value (None, bools, ints, floats, short strings, a map of application facts), and the
compiled twin written by hand (scripts/cython/_flow_rows_c.pyx) writes those straight into one
buffer, handing anything else (maps, nested arrays, bytes, subclasses, ints past 64 bits) to
msgpack itself. The output is msgpack's, byte for byte: this module, the reference, is msgpack;
tests/test_flow_rows.py compares both on every corpus capture's events and on edge values.
"""

from __future__ import annotations

from typing import Any

import msgpack

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack  # as shared/frames.py packs


def pack_rows(rows: Any, head: bytes = b"") -> bytes:
    """``head``, then ``rows`` (a list of rows) as one msgpack array: ``head + msgpack.packb(rows)``
    (a frame's header goes first without a copy of the rows after it)."""
    return head + _pack(rows)


from shared.compiled import adopt  # noqa: E402 - bound last: the twin replaces the function above

adopt(globals(), ("pack_rows",))
