"""Which shard gets what, when a stage runs as several processes.

* decoder -> flow-tracker: by a symmetric hash of the flow key the flow table uses (fragments:
  addresses only, as the table keys them), so both directions of a flow meet in one tracker;
* DNS answers reach every flow-tracker: the record goes to its own flow's tracker, and a
  names-only copy (``names_copy``: protocol ``NAMES_ONLY``, no addresses) to every other, so a
  flow is named from an answer that another tracker's flow carried;
* flow-tracker -> detector: by the flow's local address (the initiator of an outbound flow,
  the responder otherwise), so one host's entities, their state and volume intervals, live in
  one detector.

Python's ``hash`` of ints is the same in every process (only str/bytes hashing is randomised),
so every decoder picks the same tracker for a flow.
"""

from __future__ import annotations

import zlib

_from_bytes = int.from_bytes


def tracker_of(rec: tuple, shards: int) -> int:
    """The flow-tracker shard of a record (shared/records.py layout)."""
    a = _from_bytes(rec[4], "big")
    b = _from_bytes(rec[5], "big")
    if rec[10]:  # a fragment: the table keys it by its addresses only
        x = y = 0
    else:
        x, y = rec[6], rec[7]
    return hash((rec[3], a ^ b, a + b, x ^ y, x + y)) % shards


NAMES_ONLY = -1  # record protocol of a names-only copy: the table learns its answers, counts nothing


def names_copy(rec: tuple) -> tuple | None:
    """A names-only copy of a record carrying DNS answers, for the other flow-trackers."""
    app = rec[12]
    if not app or "dns.answers" not in app:
        return None
    names = {k: v for k, v in app.items() if k in ("dns.answers", "dns.queries")}
    return (rec[0], rec[1], 0, NAMES_ONLY, b"", b"", 0, 0, 0, 0, 0, 0, names)


def route_records(records: list, shards: int) -> list[list]:
    """A decoder's records split to the flow-trackers by ``tracker_of``; a record with DNS
    answers also goes, as a names-only copy, to every other tracker (each keeps its own names)."""
    out: list[list] = [[] for _ in range(shards)]
    for rec in records:
        own = tracker_of(rec, shards)
        out[own].append(rec)
        if rec[12] is not None:
            copy = names_copy(rec)
            if copy is not None:
                for j in range(shards):
                    if j != own:
                        out[j].append(copy)
    return out


def detector_of(row: list, shards: int) -> int:
    """The detector shard of a flow-event row (shared/flowevents.py FIELDS order)."""
    local = row[5] if row[9] else row[7]  # src when outbound, else dst
    return zlib.crc32(local.encode()) % shards if isinstance(local, str) else 0
