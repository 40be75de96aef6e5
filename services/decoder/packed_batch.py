"""The decoder's whole batch, packed in and packed out: a PACKETS body to a RECORDS body.

This is the reference: unpack the packet tuples (shared/packed.py), decode them
(fastpath.decode_batch), pack the record tuples. Its compiled twin,
``scripts/cython/_packed_batch_c.pyx``, is written by hand: it reads each packet in place in the
packed body and writes each record straight into the packed records, so that a packet makes no
packet tuple, no record tuple and no Python integers on its way through. Only what the
application layer needs (addresses, ports, payload) becomes Python objects, and only for the
packets the inspector is handed. Packets off the common path (other link layers, VLAN tags,
IPv6 extension chains, tunnels, fragments of TCP/UDP headers, anything malformed) go through
``decode_batch`` one at a time, in their place in the batch, so both give the same records,
the same inspector calls in the same order and the same counters: tests/test_packed_batch.py
compares them on every corpus capture and on damaged packets.

Why: on the 5x bench capture the decoders' unpack, fast path and pack took ~1.1 CPU s of
tuples and boxed integers for 917k packets (scripts/bench_stages.py); see docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from services.decoder.fastpath import decode_batch
from shared import packed


class PackedBatch(NamedTuple):
    """A batch's RECORDS body (packed bytes, or the list when a record does not fit the layout)
    and its counters; decoded + malformed == packets."""

    body: bytes | list[tuple]
    packets: int
    decoded: int
    malformed: int
    non_ip: int
    app_errors: int
    records: int


def decode_packed(body: bytes, app: Any = None) -> PackedBatch:
    """Decode a packed PACKETS body; ValueError (nothing decoded) when the body is not whole."""
    packets = packed.unpack_packets(body)
    result = decode_batch(packets, app)
    records = packed.pack_records(result.records)
    return PackedBatch(
        records if records is not None else result.records,
        len(packets),
        result.decoded,
        result.malformed,
        result.non_ip,
        result.app_errors,
        len(result.records),
    )


# The compiled twin (written by hand, scripts/cython/_packed_batch_c.pyx) takes over unless
# PKTSCOPE_PURE=1 or it was built from other sources (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("decode_packed",))
