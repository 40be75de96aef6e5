"""The flow-tracker service: decoder records in, flow events (start/update/end) to the detector out.

Modules: ``table`` (the flow table, the hot path), ``tcp_state`` (TCP connection states),
``merge`` (decoders' records back in capture order), ``names`` (passive DNS/SNI/Host names),
``flowlog`` (JSON-lines log of ended flows) and ``service`` (sockets, frames, stats).
"""
