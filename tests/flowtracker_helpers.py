"""Record builders for the flow-tracker tests (tuples in the shared/records.py layout)."""

from __future__ import annotations

import socket

from shared.records import FRAG_NONE, TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

S, SA, A, PA, FA, R = TH_SYN, TH_SYN | TH_ACK, TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_RST


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def rec(ts, src, dst, sport=0, dport=0, proto=6, flags=0, wl=60, app=None, num=0):
    return (
        num,
        float(ts),
        wl,
        proto,
        ip(src),
        ip(dst),
        sport,
        dport,
        flags,
        max(0, wl - 54),
        FRAG_NONE,
        0,
        app,
    )


def tcp_session(t0, c, s, cport, sport, wl=100, app=None, close=True):
    """Handshake, a data segment each way (the client's may carry ``app``), then FINs."""
    out = [
        rec(t0, c, s, cport, sport, flags=S, wl=60),
        rec(t0 + 0.01, s, c, sport, cport, flags=SA, wl=60),
        rec(t0 + 0.02, c, s, cport, sport, flags=A, wl=54),
        rec(t0 + 0.03, c, s, cport, sport, flags=PA, wl=wl, app=app),
        rec(t0 + 0.04, s, c, sport, cport, flags=PA, wl=wl * 3),
    ]
    if close:
        out += [rec(t0 + 0.05, c, s, cport, sport, flags=FA), rec(t0 + 0.06, s, c, sport, cport, flags=FA)]
    return out


def dns_answer(t, client, server, qname, answers, cport=53000):
    """A DNS response record: answers are (name, type, ttl, data)."""
    app = {"dns.queries": [[qname, "A"]], "dns.answers": [list(a) for a in answers]}
    return rec(t, server, client, 53, cport, proto=17, wl=120, app=app)


def numbered(records):
    """The same records with capture numbers 1..n."""
    return [(i, *r[1:]) for i, r in enumerate(records, 1)]


def numbered_streams(*streams):
    """Per-decoder record lists numbered as capture would: 1..n across all of them, in time order."""
    order = sorted(((r[1], d, i) for d, recs in enumerate(streams) for i, r in enumerate(recs)))
    out = [list(recs) for recs in streams]
    for num, (_ts, d, i) in enumerate(order, 1):
        out[d][i] = (num, *out[d][i][1:])
    return out
