"""Flow events: what the flow-tracker tells the detector (and the flow log).

The flow-tracker builds each event as a row: an array of its values in ``FIELDS`` order, and
sends it so in FLOWS frames, because unpacking 24-key maps took 0.21 s of the detector's CPU
on sv-merged.pcap's 32,002 events against 0.04 s for rows (scripts/bench_stages.py).
``from_row`` gives the map with the readable keys below (the flow log, tools, tests). Every
event carries the whole identity of its flow:

    ev          "start" | "update" | "end"
    fid         flow id, unique per flow-tracker process (int)
    ts          packet time of the event (float seconds)
    proto       IP protocol number
    ipv         4 or 6
    src, sport  initiator address (text) and port: the sender of the flow's first packet
    dst, dport  responder address (text) and port
    outbound    True when the initiator is a local address
    first, last packet time of the first and latest packet
    pkts_out, bytes_out   initiator -> responder packets / wire bytes, totals so far
    pkts_in,  bytes_in    responder -> initiator packets / wire bytes, totals so far
    d_bytes_out, d_bytes_in, d_pkts_out, d_pkts_in   deltas since this flow's previous event
    state       TCP state name (see services/flowtracker/tcp_state.py), "" for others
    reason      on "end": "fin" | "rst" | "idle" | "evicted" | "eos" | "shutdown" (None otherwise)
    name        best name for the responder ("" when none), name_src where it came from
                ("tls.sni", "quic.sni", "http.host", "dns", ...)
    app         dict of application-layer facts seen in this flow (may be empty)
    initial_rtt TCP: seconds from the latest bare SYN to the first ACK without SYN, as
                Wireshark's tcp.analysis.initial_rtt (None when no handshake was seen)
    retransmissions, out_of_order   TCP data segments resent / arriving ahead of a gap's
                filling, both directions (services/flowtracker/table.py _seqs)
"""

from __future__ import annotations

EV_START, EV_UPDATE, EV_END = "start", "update", "end"

END_REASONS = ("fin", "rst", "idle", "evicted", "eos", "shutdown")

# Row layout of a flow event on the wire; new fields are only ever appended.
FIELDS = (
    "ev",
    "fid",
    "ts",
    "proto",
    "ipv",
    "src",
    "sport",
    "dst",
    "dport",
    "outbound",
    "first",
    "last",
    "pkts_out",
    "bytes_out",
    "pkts_in",
    "bytes_in",
    "d_pkts_out",
    "d_bytes_out",
    "d_pkts_in",
    "d_bytes_in",
    "state",
    "name",
    "name_src",
    "app",
    "reason",
    "initial_rtt",
    "retransmissions",
    "out_of_order",
)
INDEX = {name: i for i, name in enumerate(FIELDS)}


def from_row(row: tuple | list) -> dict:
    """The event map of a wire row; a short row leaves the missing keys out."""
    return dict(zip(FIELDS, row, strict=False))
