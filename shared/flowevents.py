"""Flow events: what the flow-tracker tells the detector (and the flow log).

Flow events are few next to packets (a start, some updates, an end per flow), so they are
msgpack maps with readable keys. Every event carries the whole identity of its flow:

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
    reason      only on "end": "fin" | "rst" | "idle" | "evicted" | "eos" | "shutdown"
    name        best name for the responder ("" when none), name_src where it came from
                ("tls.sni", "quic.sni", "http.host", "dns", ...)
    app         dict of application-layer facts seen in this flow (may be empty)
"""

from __future__ import annotations

EV_START, EV_UPDATE, EV_END = "start", "update", "end"

END_REASONS = ("fin", "rst", "idle", "evicted", "eos", "shutdown")
