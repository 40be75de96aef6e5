"""AppInspector: the application-layer dispatcher called by the decoder's fast path.

Per-flow state lives in one dict keyed by the *directional* 5-tuple ``(src, dst, sport, dport,
proto)``; each flow is stored under both of its directions, so the hot path is one tuple and one
dict lookup with no normalisation: the value is ``None`` for a flow that is finished or
uninteresting, else ``(flow, from_client)``. The client is whoever sent the flow's first packet
(the receiver of a SYN-ACK when that comes first).

A flow's protocol is identified from content (TLS record header, HTTP/2 preface, HTTP/1 method
or status line, QUIC long header) with ports only for DNS (53, 5353, 5355). Once a flow has given
what it can (e.g. a TLS ClientHello and ServerHello), its buffers are released and it is
remembered as done. Bounds: per-direction handshake bytes, held out-of-order bytes (per stream and
in total), active flows (oldest evicted) and done flows (oldest half forgotten), all counted.

``inspect`` returns a flat dict of display-filter fields completed by this packet, or None. When
one packet completes several messages (pipelined requests, several DNS messages in a segment),
the first message's fields are the dict and the others are listed under ``"more"``.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict

from services.decoder.app import credentials, http2
from services.decoder.app.dns import DnsError, parse_message
from services.decoder.app.dns_tcp import DnsTcpSide
from services.decoder.app.http1 import Http1Conn, Http1Parser, looks_like_http1
from services.decoder.app.reassembly import ReassemblyPool, TcpStream

# TLS and QUIC parsers live in their own modules; a missing or broken one must not take DNS
# and HTTP down with it, so any import failure only disables that protocol.
try:
    from services.decoder.app import quic as _quic
except Exception:  # pragma: no cover - depends on the tree's state
    _quic = None
try:
    from services.decoder.app import tls as _tls
except Exception:  # pragma: no cover - depends on the tree's state
    _tls = None

DNS_PORTS = frozenset((53, 5353, 5355))
IDENTIFY_BYTES = 256  # content needed at most to tell the protocol of a TCP stream
QUIC_MAX_DATAGRAMS = 64  # datagrams given to a QUIC flow before it is left alone

_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10
_DNS_ERRORS = (DnsError, struct.error, IndexError, ValueError)

# what a TCP direction is being read as
K_IDENTIFY, K_TLS, K_HTTP1, K_H2, K_DNS, K_NONE = range(6)
K_CRED = 6  # a line protocol with logins (FTP, POP3, IMAP, SMTP, Telnet): watched for cleartext credentials


class TlsSide:
    """The first bytes of one direction of a TLS connection, handed to tls.parse_client/server.

    Consumer shape shared with Http1Parser, H2Direction and DnsTcpSide: ``feed(data)`` returns
    the field dicts these bytes completed, ``gap(n)`` says n bytes are missing, ``finished``
    (when present) says no more bytes are wanted.
    """

    __slots__ = ("buf", "counters", "finished", "limit", "parse")

    def __init__(self, counters: Counter, client: bool, limit: int) -> None:
        self.counters = counters
        self.buf = bytearray()
        self.limit = limit
        self.finished = _tls is None
        self.parse = None if _tls is None else (_tls.parse_client if client else _tls.parse_server)

    def gap(self, size: int) -> None:
        self.counters["tls_gap_gave_up"] += 1
        self.finished = True
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        if self.finished:
            return []
        self.buf += data
        try:
            fields, status = self.parse(bytes(self.buf))
        except Exception as exc:  # the TLS parser must never stop the dispatcher
            self.counters["tls_parser_exceptions"] += 1
            self.counters[f"tls_exception_{type(exc).__name__}"] += 1
            status, fields = "no", None
        if status == "more":
            if len(self.buf) >= self.limit:
                self.counters["tls_handshake_bound"] += 1
                self.finished = True
                self.buf = bytearray()
            return []
        self.finished = True
        self.buf = bytearray()
        if status == "done" and fields:
            return [fields]
        if status != "done":
            self.counters["tls_not_parsed"] += 1
        return []


class TcpFlow:
    """Both directions of one TCP connection: reassembly streams and their consumers."""

    __slots__ = ("ckey", "consumers", "fins", "http_conn", "kind", "last", "pending", "skey", "streams")

    def __init__(self, ckey: tuple, skey: tuple, pool: ReassemblyPool, ts: float) -> None:
        self.ckey = ckey
        self.skey = skey
        self.last = ts
        self.streams = (TcpStream(pool), TcpStream(pool))  # [0] client->server, [1] server->client
        self.consumers: list = [None, None]
        self.pending = [bytearray(), bytearray()]  # bytes awaiting identification
        self.kind = K_IDENTIFY
        self.http_conn: Http1Conn | None = None
        self.fins = 0  # bit 1: client FIN/RST, bit 2: server FIN/RST


class UdpFlow:
    """A QUIC flow (other UDP flows are only remembered as done)."""

    __slots__ = ("ckey", "datagrams", "last", "quic", "skey")

    def __init__(self, ckey: tuple, skey: tuple, quic_flow, ts: float) -> None:
        self.ckey = ckey
        self.skey = skey
        self.quic = quic_flow
        self.last = ts
        self.datagrams = 0


class AppInspector:
    """Application-layer fields (DNS, HTTP/1, HTTP/2, TLS, QUIC) from a decoder's packets."""

    def __init__(
        self,
        *,
        max_flows: int = 50_000,
        max_done: int = 400_000,
        handshake_bytes: int = 16384,
        max_held_total: int = 32 << 20,
        max_buffered: int = 64 << 20,
        idle_timeout: float = 120.0,
        quiet_timeout: float = 10.0,
        sweep_interval: float = 5.0,
        gap_wait: float = 2.0,
    ) -> None:
        self.counters: Counter = Counter()
        self.max_flows = max_flows
        self.max_done = max_done
        self.handshake_bytes = handshake_bytes
        self.idle_timeout = idle_timeout
        self.max_buffered = max_buffered  # parser buffers across flows, checked per sweep
        self.buffered = 0
        self.quiet_timeout = quiet_timeout  # for TCP flows without data: scans, refused SYNs
        self.sweep_interval = sweep_interval
        self.pool = ReassemblyPool(self.counters, gap_wait=gap_wait, max_total=max_held_total)
        self._table: dict = {}  # directional key -> None (done) | (flow, from_client)
        # for the fast path: ``state_of(key, False) is None`` means inspect() would return None
        # at once (the flow is finished), so the packet need not be handed over
        self.state_of = self._table.get
        self._active: OrderedDict = OrderedDict()  # client key -> flow, oldest first
        self._next_sweep = 0.0

    def all_counters(self) -> Counter:
        """Every application-layer counter of this process: the inspector's, TLS's and QUIC's."""
        out = Counter(self.counters)
        for module in (_tls, _quic):
            if module is not None:
                out.update(module.counters)
        return out

    # --- hot path --------------------------------------------------------------------------
    def inspect(
        self,
        ts: float,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        tcp_flags: int,
        tcp_seq: int,
        payload: bytes,
    ) -> dict | None:
        key = (src, dst, sport, dport, proto)
        entry = self._table.get(key, False)
        if entry is None:
            if tcp_flags & 0x12 != 0x02 or proto != 6:
                return None
            entry = False  # a new SYN on a finished 5-tuple (port reuse) starts a new flow
        if proto == 17:
            if sport in DNS_PORTS or dport in DNS_PORTS:
                return self._dns_datagram(payload)
            if entry is False:
                return self._new_udp(ts, key, (dst, src, dport, sport, 17), payload)
            flow, from_client = entry
            return self._quic(flow, from_client, ts, payload)
        if proto != 6:
            return None
        if entry is False:
            entry = self._new_tcp(ts, key, (dst, src, dport, sport, 6), tcp_flags, payload)
            if entry is None:
                return None
        flow, from_client = entry
        if tcp_flags & 0x12 == 0x02 and flow.streams[0 if from_client else 1].started:
            # a SYN after data: the 5-tuple was reused by a new connection
            self.counters["flows_restarted"] += 1
            self._finish(flow)
            entry = self._new_tcp(ts, key, (dst, src, dport, sport, 6), tcp_flags, payload)
            if entry is None:  # the new SYN also carried RST/FIN and no data: nothing to follow
                return None
            flow, from_client = entry
        flow.last = ts
        try:
            return self._tcp(flow, from_client, ts, tcp_flags, tcp_seq, payload)
        except Exception as exc:  # a decoder bug must cost one flow, never the packet stream
            self.counters["app_exceptions"] += 1
            self.counters[f"app_exception_{type(exc).__name__}"] += 1
            self._finish(flow)
            return None

    # --- DNS over UDP ----------------------------------------------------------------------
    def _dns_datagram(self, payload: bytes) -> dict | None:
        try:
            return parse_message(payload, self.counters)
        except _DNS_ERRORS:
            self.counters["dns_parse_errors"] += 1
            return None

    # --- UDP / QUIC ------------------------------------------------------------------------
    def _new_udp(self, ts: float, key: tuple, rkey: tuple, payload: bytes) -> dict | None:
        quic = _quic
        try:
            is_quic = quic is not None and quic.looks_like_quic(payload)
        except Exception:
            self.counters["quic_exceptions"] += 1
            is_quic = False
        if not is_quic:
            self._mark_done(key, rkey)
            return None
        try:
            flow = UdpFlow(key, rkey, quic.QuicFlow(), ts)
        except Exception:
            self.counters["quic_exceptions"] += 1
            self._mark_done(key, rkey)
            return None
        self._track(flow)
        self.counters["flows_quic"] += 1
        return self._quic(flow, True, ts, payload)

    def _quic(self, flow: UdpFlow, from_client: bool, ts: float, payload: bytes) -> dict | None:
        flow.last = ts
        flow.datagrams += 1
        try:
            fields = flow.quic.feed(payload, from_client)
        except Exception as exc:
            self.counters["quic_exceptions"] += 1
            self.counters[f"quic_exception_{type(exc).__name__}"] += 1
            fields = None
            self._finish(flow)
            return None
        if flow.datagrams >= QUIC_MAX_DATAGRAMS or getattr(flow.quic, "done", False):
            self._finish(flow)
        return fields or None

    # --- TCP -------------------------------------------------------------------------------
    def _new_tcp(self, ts: float, key: tuple, rkey: tuple, flags: int, payload: bytes):
        """First packet of a TCP flow: decide who is the client, or give up on it."""
        if flags & (_RST | _FIN) and not payload:
            self._mark_done(key, rkey)
            return None
        if flags & _SYN and flags & _ACK:  # SYN-ACK first: the receiver is the client
            flow = TcpFlow(rkey, key, self.pool, ts)
            self._track(flow)
            return flow, False
        flow = TcpFlow(key, rkey, self.pool, ts)
        self._track(flow)
        return flow, True

    def _tcp(self, flow: TcpFlow, from_client: bool, ts: float, flags: int, seq: int, payload: bytes):
        side = 0 if from_client else 1
        stream = flow.streams[side]
        if flags & _SYN:
            stream.syn(seq)
            seq = (seq + 1) & 0xFFFFFFFF  # data on a SYN (TCP Fast Open) follows the ISN
        pieces = stream.add(ts, seq, payload) if payload else None
        out = self._deliver(flow, side, pieces) if pieces else None
        if flags & (_FIN | _RST):
            # FIN or RST ends this direction: skip holes, deliver what is held, and let the
            # consumer complete a message cut short. The flow is done once both sides ended
            # (an early RST, as evasion tests send, does not stop reading the other side).
            held = stream.flush()
            more = self._deliver(flow, side, held) if held else []
            consumer = flow.consumers[side]
            if consumer is not None and hasattr(consumer, "close"):
                more += consumer.close()
            if more:
                out = more if out is None else out + more
            flow.fins |= 1 << side
            if flow.fins == 3:
                self._finish(flow)
        if flow.kind != K_IDENTIFY and _all_finished(flow) and self._table.get(flow.ckey) is not None:
            self._finish(flow)
        if not out:
            return None
        first = out[0]
        if len(out) > 1:
            first = dict(first)
            first["more"] = out[1:]
        return first

    def _deliver(self, flow: TcpFlow, side: int, pieces: list) -> list:
        """Give reassembled pieces to the direction's consumer; return completed field dicts."""
        out: list = []
        for piece in pieces:
            consumer = flow.consumers[side]
            if consumer is None:
                if flow.kind == K_NONE:
                    return out
                if type(piece) is int:
                    flow.pending[side].clear()  # cannot identify across a hole; start afresh
                    continue
                flow.pending[side] += piece
                if not self._identify(flow, side):
                    continue
                consumer = flow.consumers[side]
                if consumer is None:
                    return out
                piece = bytes(flow.pending[side])
                flow.pending[side] = bytearray()
                other = 1 - side
                if flow.pending[other] and flow.consumers[other] is not None:
                    # the other side spoke first (e.g. an HTTP/2 server's SETTINGS): replay it
                    held = bytes(flow.pending[other])
                    flow.pending[other] = bytearray()
                    out.extend(flow.consumers[other].feed(held))
            if type(piece) is int:
                consumer.gap(piece)
                continue
            found = consumer.feed(piece)
            if found:
                out.extend(found)
            if flow.kind == K_HTTP1 and flow.http_conn.switch:
                out.extend(self._switch(flow))
        return out

    def _identify(self, flow: TcpFlow, side: int) -> bool:
        """Pick the flow's protocol from this direction's first bytes; False when more needed."""
        if flow.kind != K_IDENTIFY:
            return True  # consumers are set for both sides at once; none is wanted here
        pending = flow.pending[side]
        kind = _classify(bytes(pending[:IDENTIFY_BYTES]), flow.ckey)
        if kind is None:
            if len(pending) < IDENTIFY_BYTES:
                return False
            kind = K_NONE
        if kind == K_NONE and side == 1 and not flow.pending[0]:
            # server spoke first with something we cannot tell (an HTTP/2 server's SETTINGS):
            # keep it (bounded) and let the client's first bytes decide
            if len(pending) <= self.handshake_bytes:
                return False
            self.counters["identify_bound"] += 1
        self._set_kind(flow, kind)
        return True

    def _set_kind(self, flow: TcpFlow, kind: int) -> None:
        counters = self.counters
        flow.kind = kind
        if kind == K_TLS:
            counters["flows_tls"] += 1
            flow.consumers = [
                TlsSide(counters, True, self.handshake_bytes),
                TlsSide(counters, False, self.handshake_bytes),
            ]
        elif kind == K_HTTP1:
            counters["flows_http1"] += 1
            conn = flow.http_conn = Http1Conn()
            flow.consumers = [Http1Parser(conn, counters), Http1Parser(conn, counters)]
        elif kind == K_H2:
            counters["flows_http2"] += 1
            flow.consumers = list(http2.new_connection(counters, True))
        elif kind == K_DNS:
            counters["flows_dns_tcp"] += 1
            flow.consumers = [DnsTcpSide(counters), DnsTcpSide(counters)]
        else:
            counters["flows_unidentified"] += 1  # no app protocol decoded; logins may still be watched
            sides = _credential_watch(flow)
            if sides is not None:
                flow.kind = K_CRED
                counters["flows_credential_watch"] += 1
                flow.consumers = sides
                return
            flow.consumers = [None, None]

    def _switch(self, flow: TcpFlow) -> list:
        """After 101 (h2c) or CONNECT 2xx: carry both directions over to the new protocol.

        Returns the fields found in bytes that arrived behind the switching head.
        """
        out: list = []
        conn = flow.http_conn
        parsers = flow.consumers
        leftovers = [p.leftover() if isinstance(p, Http1Parser) else b"" for p in parsers]
        how = conn.switch
        conn.switch = ""
        flow.http_conn = None
        if how == "h2":
            self.counters["http_upgrades_h2c"] += 1
            flow.kind = K_H2
            flow.consumers = list(http2.new_connection(self.counters, True))
            for side in (0, 1):
                if leftovers[side]:
                    out.extend(flow.consumers[side].feed(leftovers[side]))
        elif how == "tunnel":
            self.counters["http_connect_tunnels"] += 1
            flow.kind = K_IDENTIFY
            flow.consumers = [None, None]
            flow.pending = [bytearray(leftovers[0]), bytearray(leftovers[1])]
        else:
            self.counters["http_upgrades_other"] += 1
            flow.kind = K_NONE
            flow.consumers = [None, None]
        return out

    # --- table management ------------------------------------------------------------------
    def _track(self, flow) -> None:
        active = self._active
        if len(active) >= self.max_flows:
            _, old = active.popitem(last=False)
            self.counters["flows_evicted"] += 1
            self._finish(old, evicted=True)
        active[flow.ckey] = flow
        self._table[flow.ckey] = (flow, True)
        self._table[flow.skey] = (flow, False)
        self.counters["flows_tracked"] += 1

    def _finish(self, flow, evicted: bool = False) -> None:
        """Release a flow's buffers and remember it cheaply as done."""
        if isinstance(flow, TcpFlow):
            for stream in flow.streams:
                stream.release()
            flow.consumers = [None, None]
            flow.pending = [bytearray(), bytearray()]
        self._active.pop(flow.ckey, None)
        if not evicted:
            self.counters["flows_done"] += 1
        self._mark_done(flow.ckey, flow.skey)

    def _mark_done(self, key: tuple, rkey: tuple) -> None:
        table = self._table
        table[key] = None
        table[rkey] = None
        if len(table) > self.max_done + 2 * self.max_flows:
            self._forget_done()

    def _forget_done(self) -> None:
        """Forget the older half of the done entries (one pass, amortised over many flows)."""
        table = self._table
        drop = len(table) // 2
        kept = {}
        for k, v in table.items():
            if v is None and drop > 0:
                drop -= 1
                continue
            kept[k] = v
        self.counters["done_forgotten"] += len(table) - len(kept)
        table.clear()  # in place: the fast path holds ``state_of``, this dict's get
        table.update(kept)

    def expire(self, now_ts: float) -> None:
        """Drop flows idle for ``idle_timeout`` seconds of packet time (checked every few seconds).

        TCP flows that never carried data go after ``quiet_timeout``: a SYN scan must not
        fill the table and evict live conversations.
        """
        if now_ts < self._next_sweep:
            return
        self._next_sweep = now_ts + self.sweep_interval
        limit = now_ts - self.idle_timeout
        quiet_limit = now_ts - self.quiet_timeout
        idle = [
            flow
            for flow in self._active.values()
            if flow.last < limit or (flow.last < quiet_limit and _never_carried_data(flow))
        ]
        for flow in idle:
            self.counters["flows_expired"] += 1
            self._finish(flow)
        self._bound_buffers()

    def _bound_buffers(self) -> None:
        """Parser buffers are bounded per flow; across flows they are checked at each sweep and
        the oldest flows are dropped (counted) while the total is over ``max_buffered``."""
        total = 0
        for flow in self._active.values():
            if type(flow) is TcpFlow:
                total += _buffered(flow)
        while total > self.max_buffered and self._active:
            _, flow = self._active.popitem(last=False)
            if type(flow) is TcpFlow:
                total -= _buffered(flow)
            self.counters["flows_dropped_buffer_bound"] += 1
            self._finish(flow, evicted=True)
        self.buffered = total

    @property
    def active_flows(self) -> int:
        return len(self._active)


def _classify(data: bytes, ckey: tuple) -> int | None:
    """Protocol of a TCP stream from its first bytes (ports only for DNS); None: need more."""
    if ckey[2] in DNS_PORTS or ckey[3] in DNS_PORTS:
        return K_DNS
    first = data[0]
    if first == 0x16:
        if len(data) < 2:
            return None
        return K_TLS if data[1] == 3 else K_NONE
    if first == 0x50 and http2.PREFACE.startswith(data[:24]):  # "P"
        return K_H2 if len(data) >= 24 else None
    verdict = looks_like_http1(data)
    if verdict is None:
        return None
    return K_HTTP1 if verdict else K_NONE


class _CredSide:
    """One direction of a LineWatch, in the consumer shape (feed, gap, finished)."""

    __slots__ = ("client", "watch")

    def __init__(self, watch: credentials.LineWatch, client: bool) -> None:
        self.watch = watch
        self.client = client

    @property
    def finished(self) -> bool:
        return self.watch.finished

    def feed(self, data: bytes) -> list:
        return self.watch.feed(data, self.client)

    def gap(self, size: int) -> None:
        self.watch.gap(size)


def _credential_watch(flow: TcpFlow) -> list | None:
    """Consumers watching a login protocol's stream (by its server port), unless it is encrypted."""
    protocol = credentials.PORT_PROTOCOLS.get(flow.ckey[3])
    if protocol is None:
        return None
    if credentials.looks_encrypted(bytes(flow.pending[0][:4])) or credentials.looks_encrypted(
        bytes(flow.pending[1][:4])
    ):
        return None
    watch = credentials.LineWatch(protocol)
    return [_CredSide(watch, True), _CredSide(watch, False)]


def _buffered(flow: TcpFlow) -> int:
    """Bytes a TCP flow's parsers and identification buffers hold."""
    size = len(flow.pending[0]) + len(flow.pending[1])
    for consumer in flow.consumers:
        buf = getattr(consumer, "buf", None)
        if buf is not None:
            size += len(buf)
    return size


def _never_carried_data(flow) -> bool:
    """A TCP flow that saw only SYN/FIN/RST so far (scans, refused connections)."""
    return isinstance(flow, TcpFlow) and not (flow.streams[0].started or flow.streams[1].started)


def _all_finished(flow: TcpFlow) -> bool:
    """True when neither direction's consumer wants more bytes."""
    if flow.kind == K_NONE:
        return True
    for consumer in flow.consumers:
        if consumer is None or not getattr(consumer, "finished", False):
            return False
    return True


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("AppInspector",))
