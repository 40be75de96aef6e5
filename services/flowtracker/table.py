"""The flow table: records in, flow events out, driven by packet time only.

Flows are keyed by the normalised 5-tuple ``(proto, addr_a, port_a, addr_b, port_b)`` with
``(addr_a, port_a) <= (addr_b, port_b)``, so both directions find the same entry. Per-flow
state is a list indexed by the slot constants below (cheaper than attributes on the hot path).

Determinism with several decoders. Capture shards by flow, so one flow's packets arrive in
order from one decoder, but flows from different decoders interleave differently on every
run. Every timer therefore fires at a time computed from the flow's own packets (idle end at
``last + timeout``, updates on a grid ``first + k * update_interval``), whether it is noticed
lazily by the flow's next packet or by a sweep; sweeps only look up to the lowest decoder
watermark (``advance``), before which no decoder can still send a packet. Events wait in a
queue until the watermark passes their time and only then get their DNS name, "as of" the
event's time: by then every DNS answer from before that time has been seen on every input.
What is not deterministic across interleavings: the order of events, flow ids, and which flow
is evicted when the table is full.

Sweeps never scan the table: each timeout class (TCP handshake, TCP open, TCP closed, UDP,
ICMP, other) keeps its flows in an OrderedDict in last-seen order, so the expired flows of
a class are at its front. Update timers sit in a heap, pushed once per flow per event.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from heapq import heappop, heappush
from typing import Any

from services.flowtracker import tcp_state
from services.flowtracker.names import SRC_DNS, DnsNames, address_text, merge_app_facts, own_name
from shared.config import FlowSettings
from shared.flowevents import EV_END, EV_START, EV_UPDATE, INDEX, from_row
from shared.records import ICMP, ICMP6, TCP, UDP

ESTABLISHED = tcp_state.ESTABLISHED
CLOSED = tcp_state.CLOSED
RESET = tcp_state.RESET

# --- per-flow state slots ---------------------------------------------------------------------
(
    FID,  # flow id
    KEY,  # normalised 5-tuple
    PROTO,
    IPV,
    SRC,  # initiator address text
    SPORT,
    DST,  # responder address text
    DPORT,
    INIT_FIRST,  # True when the initiator is the key's first endpoint
    OUTBOUND,
    FIRST,
    LAST,
    POUT,
    BOUT,
    PIN,
    BIN,
    POUT0,  # totals at the previous event (deltas are taken against these)
    BOUT0,
    PIN0,
    BIN0,
    STATE,  # TCP state name, "" for other protocols
    FINS,  # TCP: which directions sent a FIN
    IDLE,  # timeout of the flow's current class
    LRU,  # the OrderedDict of its timeout class
    NEXT_UPD,  # packet time of the next update: FIRST + UPD_K * update_interval
    UPD_K,
    DIRTY,  # packets since the previous event
    NAME,  # own name (SNI / Host) and where it came from
    NAME_SRC,
    NAME_RANK,
    DNS_NAME,  # name from DNS, fixed once found
    APP,  # dict of app facts, or None
    ALIVE,
    SYN_TS,  # TCP: time of the latest bare SYN (0.0: none seen)
    IRTT,  # TCP: initial RTT (seconds) once known, else None
    SEQ,  # TCP: [next seq out, next seq in, holes out, holes in, retransmissions, out of order] or None
) = range(36)

NO_RANK = 99
MAX_HOLES = 8  # sequence gaps remembered per direction, for telling out-of-order from retransmitted
R_NAME, R_NAME_SRC = INDEX["name"], INDEX["name_src"]  # event row slots set on release
_STATE_REASON = {CLOSED: "fin", RESET: "rst"}
# The app map of an event of a flow without app facts: one shared empty map, never mutated
# (a new {} per event was 64 of the ~450 bytes a waiting event holds).
_NO_APP: dict = {}


class FlowTable:
    """Bidirectional flows with TCP states, timeouts, names; emits flow-event maps.

    Call ``add(records)`` per batch and ``advance(watermark)`` with the lowest decoder
    watermark, then ``take()`` the events that are ready; ``finish(reason, ts)`` at the end.
    """

    def __init__(
        self,
        settings: FlowSettings | None = None,
        is_local: Callable[[bytes], bool] | None = None,
        names: DnsNames | None = None,
        fid_start: int = 1,
        fid_step: int = 1,
    ) -> None:
        s = settings or FlowSettings()
        self.settings = s
        self.is_local = is_local or (lambda _addr: False)
        self.names = names if names is not None else DnsNames()
        self.flows: dict[tuple, list] = {}
        # an interval of 0 or less turns periodic updates off
        self.update_interval = float(s.update_interval) if s.update_interval > 0 else math.inf
        self.max_flows = max(1, int(s.max_flows))
        # timeout classes: (lru, timeout)
        self.lru_handshake: OrderedDict[tuple, None] = OrderedDict()
        self.lru_tcp: OrderedDict[tuple, None] = OrderedDict()
        self.lru_closed: OrderedDict[tuple, None] = OrderedDict()
        self.lru_udp: OrderedDict[tuple, None] = OrderedDict()
        self.lru_icmp: OrderedDict[tuple, None] = OrderedDict()
        self.lru_other: OrderedDict[tuple, None] = OrderedDict()
        self.classes = (
            (self.lru_handshake, float(s.tcp_handshake_idle)),
            (self.lru_tcp, float(s.tcp_idle)),
            (self.lru_closed, float(s.tcp_closed_linger)),
            (self.lru_udp, float(s.udp_idle)),
            (self.lru_icmp, float(s.icmp_idle)),
            (self.lru_other, float(s.other_idle)),
        )
        self.updates: list[tuple[float, int, list]] = []  # (due, n, flow)
        # Events waiting for the watermark, (ts, key, n, row, flow): sorted from ``pending_head`` on,
        # and those emitted since the last release (``fresh``) in emission order.
        self.pending: list[tuple[float, tuple, int, list, list]] = []
        self.pending_head = 0
        self.fresh: list[tuple[float, tuple, int, list, list]] = []
        self.reorder_window = max(0.0, float(s.reorder_window))
        self.max_pending = max(1, int(s.max_pending_events))
        self.horizon = -math.inf  # events before this packet time have been released
        self.out: list[list] = []
        self._n = itertools.count()
        self._fid = itertools.count(fid_start, fid_step)  # shards number their flows apart
        # counters
        self.records = 0
        self.bad_records = 0
        self.flows_started = 0
        self.flows_ended = 0
        self.evicted = 0
        self.release_forced = 0

    def __len__(self) -> int:
        return len(self.flows)

    # --- the hot path ----------------------------------------------------------------------------
    def add(self, records: Iterable[tuple]) -> None:
        """Account a batch of records (shared/records.py) in capture order."""
        self.records += _add_records(self, records)

    def _arrive(
        self,
        old: list | None,
        key: tuple,
        fwd: bool,
        ts: float,
        wl: int,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        flags: int,
        app: Any,
        pl: int = 0,
        seq: int = 0,
    ) -> list:
        """A packet that starts a flow: the first of its 5-tuple, after an idle gap, or a port reuse.
        Returns the new flow's state."""
        if not isinstance(ts, float | int) or ts != ts or not isinstance(wl, int):
            raise TypeError("record with a bad timestamp or length")
        if len(src) not in (4, 16) or len(dst) != len(src) or not isinstance(flags, int):
            raise ValueError("record with bad addresses")
        if type(sport) is not int or type(dport) is not int or type(proto) is not int:
            # keys are compared when events of one time are ordered: all their parts must be ints
            raise ValueError("record with bad ports or protocol")
        if old is not None:
            if ts - old[LAST] > old[IDLE]:
                self._end(old, _STATE_REASON.get(old[STATE], "idle"), old[LAST] + old[IDLE])
            else:  # a new SYN on a finished connection's 5-tuple
                self._end(old, _STATE_REASON[old[STATE]], ts)
        flows = self.flows
        if len(flows) >= self.max_flows:
            self._evict(ts)
        if proto == TCP:
            state, sender_initiates, fins = tcp_state.initial(flags)
        else:
            state, sender_initiates, fins = "", True, 0
        if sender_initiates:
            init_raw, init_port, resp_raw, resp_port = src, sport, dst, dport
            counts = (1, wl, 0, 0)
            init_first = fwd
        else:
            init_raw, init_port, resp_raw, resp_port = dst, dport, src, sport
            counts = (0, 0, 1, wl)
            init_first = not fwd
        lru, idle = self._class_of(proto, state)
        iv = self.update_interval
        st = [
            next(self._fid),
            key,
            proto,
            4 if len(src) == 4 else 6,
            address_text(init_raw),
            init_port,
            address_text(resp_raw),
            resp_port,
            init_first,
            bool(self.is_local(init_raw)),
            ts,
            ts,
            *counts,
            0,
            0,
            0,
            0,
            state,
            fins,
            idle,
            lru,
            ts + iv,
            1,
            True,
            "",
            "",
            NO_RANK,
            "",
            None,
            True,
            ts if proto == TCP and flags & 0x12 == 0x02 else 0.0,
            None,
            None,
        ]
        if (proto == ICMP or proto == ICMP6) and isinstance(seq, int) and seq >= 0:
            st[APP] = {"icmp.type": seq >> 8, "icmp.code": seq & 0xFF}  # the first packet's (EVE)
        flows[key] = st
        lru[key] = None
        self.flows_started += 1
        if proto == TCP and isinstance(seq, int) and isinstance(pl, int) and pl > 0:
            _seqs(st, sender_initiates, seq + (flags >> 1 & 1), pl)
        if app is not None:
            self._app(st, app, ts, True)
        self._emit(st, EV_START, ts)
        return st

    def _class_of(self, proto: int, state: str) -> tuple[OrderedDict, float]:
        c = self.classes
        if proto == TCP:
            if state is ESTABLISHED or state is tcp_state.FIN_WAIT:
                return c[1]
            if state is CLOSED or state is RESET:
                return c[2]
            return c[0]
        if proto == UDP:
            return c[3]
        if proto == ICMP or proto == ICMP6:
            return c[4]
        return c[5]

    def _tcp(self, st: list, flags: int, from_initiator: bool, ts: float) -> None:
        # Initial RTT as Wireshark's tcp.analysis.initial_rtt: from the latest bare SYN to the
        # first packet with ACK and without SYN (either direction). Such packets all come here:
        # the state is not "established" before one of them.
        syn_ack = flags & 0x12
        if syn_ack == 0x02:
            st[SYN_TS] = ts
        elif syn_ack == 0x10 and st[SYN_TS] and st[IRTT] is None:
            st[IRTT] = ts - st[SYN_TS]
        state, st[FINS] = tcp_state.step(st[STATE], st[FINS], flags, from_initiator)
        if state is not st[STATE]:
            st[STATE] = state
            lru, idle = self._class_of(TCP, state)
            if lru is not st[LRU]:
                key = st[KEY]
                del st[LRU][key]
                lru[key] = None
                st[LRU] = lru
                st[IDLE] = idle

    def _app(self, st: list, app: Any, ts: float, starting: bool) -> None:
        """Names and facts from a packet's application fields."""
        if not isinstance(app, dict):
            return
        if "dns.answers" in app:
            self.names.learn(app, ts)
        facts = st[APP]
        if facts is None:
            facts = st[APP] = {}
        merge_app_facts(facts, app)
        own = own_name(app)
        if own is not None and own[2] < st[NAME_RANK]:
            unnamed = not st[NAME]
            st[NAME], st[NAME_SRC], st[NAME_RANK] = own
            if unnamed and not starting:
                self._emit(st, EV_UPDATE, ts)  # the detector wants the name soon after the start

    # --- timers -----------------------------------------------------------------------------------
    def _due(self, st: list, ts: float) -> None:
        """A packet at ``ts`` passed the flow's update time: report what came before it."""
        if st[DIRTY]:
            self._emit(st, EV_UPDATE, st[NEXT_UPD])
        iv = self.update_interval
        k = math.floor((ts - st[FIRST]) / iv) + 1
        st[UPD_K] = k
        st[NEXT_UPD] = st[FIRST] + k * iv

    def advance(self, watermark: float) -> None:
        """Fire every timer up to ``watermark`` (the packet time every input has passed) and
        release the events up to it.

        The sweep runs on every call: an idle end found later than its time would leave after
        events that follow it in time. It looks at the front of each timeout class only (six
        dict heads when nothing expired), so this costs next to nothing.
        """
        self._sweep(watermark)
        self._run_updates(watermark)
        horizon = watermark - self.reorder_window
        if horizon > self.horizon:
            self.horizon = horizon
            self._release(horizon)

    def _sweep(self, now: float) -> None:
        flows = self.flows
        end = self._end
        for lru, _timeout in self.classes:
            while lru:
                st = flows[next(iter(lru))]
                if now - st[LAST] > st[IDLE]:
                    end(st, _STATE_REASON.get(st[STATE], "idle"), st[LAST] + st[IDLE])
                else:
                    break

    def _run_updates(self, now: float) -> None:
        heap = self.updates
        iv = self.update_interval
        while heap and heap[0][0] <= now:
            due, _n, st = heappop(heap)
            if st[ALIVE] and st[DIRTY] and st[NEXT_UPD] == due and due <= st[LAST] + st[IDLE]:
                self._emit(st, EV_UPDATE, due)
                st[UPD_K] += 1
                st[NEXT_UPD] = st[FIRST] + st[UPD_K] * iv

    def _evict(self, ts: float) -> None:
        """Make room: end the least recently seen flow of all classes."""
        flows = self.flows
        oldest = None
        for lru, _timeout in self.classes:
            if lru:
                st = flows[next(iter(lru))]
                if oldest is None or st[LAST] < oldest[LAST]:
                    oldest = st
        if oldest is not None:
            self.evicted += 1
            self._end(oldest, "evicted", ts)

    def _end(self, st: list, reason: str, ts: float) -> None:
        if st[DIRTY] and st[NEXT_UPD] <= ts:
            self._emit(st, EV_UPDATE, st[NEXT_UPD])  # the update that was due before the end
        self._emit(st, EV_END, ts, reason)
        st[ALIVE] = False
        key = st[KEY]
        del self.flows[key]
        del st[LRU][key]
        self.flows_ended += 1

    def finish(self, reason: str, ts: float) -> None:
        """End every flow: those idle by ``ts`` as usual, the rest with ``reason``; release all."""
        self._run_updates(ts)
        for st in list(self.flows.values()):  # a full scan: classes are in arrival order, not time order
            if ts - st[LAST] > st[IDLE]:
                self._end(st, _STATE_REASON.get(st[STATE], "idle"), st[LAST] + st[IDLE])
        for st in list(self.flows.values()):
            self._end(st, reason, max(ts, st[LAST]))
        self._release(math.inf)

    # --- events -----------------------------------------------------------------------------------
    def _emit(self, st: list, ev: str, ts: float, reason: str | None = None) -> None:
        """Queue an event as its wire row (shared/flowevents.py FIELDS order): no map is built."""
        pout, bout, pin, bin_ = st[POUT], st[BOUT], st[PIN], st[BIN]
        row = [
            ev,
            st[FID],
            ts,
            st[PROTO],
            st[IPV],
            st[SRC],
            st[SPORT],
            st[DST],
            st[DPORT],
            st[OUTBOUND],
            st[FIRST],
            st[LAST],
            pout,
            bout,
            pin,
            bin_,
            pout - st[POUT0],
            bout - st[BOUT0],
            pin - st[PIN0],
            bin_ - st[BIN0],
            st[STATE],
            st[NAME],
            st[NAME_SRC],
            dict(st[APP]) if st[APP] else _NO_APP,
            reason,
            None if st[IRTT] is None else round(st[IRTT], 9),
            st[SEQ][4] if st[SEQ] else 0,
            st[SEQ][5] if st[SEQ] else 0,
        ]
        st[POUT0], st[BOUT0], st[PIN0], st[BIN0] = pout, bout, pin, bin_
        st[DIRTY] = False
        fresh = self.fresh
        fresh.append((ts, st[KEY], next(self._n), row, st))
        if len(fresh) + len(self.pending) - self.pending_head > self.max_pending:
            self._release_early()

    def _release_early(self) -> None:
        """The waiting events are at their bound: hand out the oldest quarter now, before the
        reorder window has passed them (counted; see FlowSettings.max_pending_events)."""
        pending = self._settle()
        head = self.pending_head
        ready = pending[head : head + max(1, self.max_pending // 4)]
        self._consumed(head + len(ready))
        self.release_forced += len(ready)
        self._hand_out(ready)

    def _release(self, now: float) -> None:
        """Hand out the events before ``now`` in time order, naming unnamed flows from DNS as of each.

        Events leave in (ts, flow key, creation order) order: events at one packet time come out
        in flow-key order, not in the order the decoders' frames happened to arrive (the order
        never reaches the event rows: creation numbers differ).
        """
        pending = self._settle()
        head = self.pending_head
        if head == len(pending):
            return
        # Strictly before ``now``: an event at ``now`` itself may still be joined by others at
        # the same time (an idle end due exactly now, a packet at now not yet fed), and events
        # at one time leave together, in flow-key order, whatever the frames were.
        cut = len(pending) if pending[-1][0] < now else bisect_left(pending, (now,), head)
        if cut == head:
            return
        ready = pending[head:cut]
        self._consumed(cut)
        self._hand_out(ready)

    def _settle(self) -> list:
        """The waiting events, all sorted: the fresh ones merged in (from ``pending_head`` on).

        Events are emitted at or a little before the latest packet time, so the fresh ones sort
        among the last waiting ones: only that tail is sorted again. (A heap of the waiting
        events cost ~5,500 instructions an event on sv-merged, whose scan keeps thousands
        waiting; tuples whose first items are all floats sort with C float comparisons.)
        """
        pending = self.pending
        fresh = self.fresh
        if fresh:
            self.fresh = []
            fresh.sort()
            cut = bisect_right(pending, fresh[0], self.pending_head)
            if cut < len(pending):
                fresh += pending[cut:]
                del pending[cut:]
                fresh.sort()  # two sorted runs: one linear merge
            pending += fresh
        return pending

    def _consumed(self, cut: int) -> None:
        """The waiting events before ``cut`` have left."""
        pending = self.pending
        if cut >= len(pending):
            pending.clear()
            cut = 0
        elif cut:
            # at once, not now and then: a consumed entry keeps its row and its flow's state alive
            # (keeping up to half the list consumed cost the flow-tracker +25% peak RSS on the 5x
            # capture); a memmove of the pointers left, ~20 us for 50,000 waiting events a release
            del pending[:cut]
            cut = 0
        self.pending_head = cut

    def _hand_out(self, ready: list[tuple[float, tuple, int, list, list]]) -> None:
        """Put released events (in time order) out, naming unnamed flows from DNS as of each."""
        out = self.out
        lookup = self.names.lookup
        for ts, _key, _n, row, st in ready:
            if not row[R_NAME]:
                name = st[DNS_NAME] or lookup(st[DST], ts, st[FIRST])
                if name:
                    st[DNS_NAME] = name
                    row[R_NAME] = name
                    row[R_NAME_SRC] = SRC_DNS
            out.append(row)

    def take_rows(self) -> list[list]:
        """The events released so far as wire rows (and forget them): what the service sends."""
        out = self.out
        self.out = []
        return out

    def take(self) -> list[dict]:
        """The events released so far as maps (and forget them): for tools and tests."""
        return [from_row(row) for row in self.take_rows()]

    @property
    def waiting(self) -> int:
        """Events held back until the slowest decoder catches up."""
        return len(self.fresh) + len(self.pending) - self.pending_head


# --- the per-record loop ------------------------------------------------------------------------
# A module function rather than the body of FlowTable.add: the compiled twin types its locals in
# scripts/cython/_table_c.pxd (a flow's state as a list, the flow dict as a dict), which Cython
# allows for module functions only.
def _add_records(self: FlowTable, records: Iterable[tuple]) -> int:
    """FlowTable.add: account a batch of records; return how many were looked at (bad ones too)."""
    flows = self.flows
    updates = self.updates
    inf = math.inf
    nxt = self._n.__next__
    established = ESTABLISHED
    arrive = self._arrive
    due = self._due
    tcp = self._tcp
    app_fields = self._app
    move_to_end = _move_to_end
    push = heappush
    # The previous record's flow: 87% of sv-merged's records belong to the flow of the record
    # before them (either way), and comparing five fields is cheaper than building, hashing and
    # looking up a key (~900 instructions, callgrind). Used only while that flow is alive:
    # then it is the one its key maps to.
    prev = None
    prev_src = prev_dst = prev_sport = prev_dport = prev_proto = None
    prev_fwd = False
    # The previous record's flow is last in its LRU once that record was handled (moved there, or
    # started there): then a record of the same flow need not move it (87% of records; an
    # OrderedDict.move_to_end hashes the key again). Nothing between two records puts another
    # flow after it (only a record starts a flow; the sweep and evictions remove).
    prev_at_end = False
    n = 0
    it = iter(records)
    while True:
        try:
            for _num, ts, wl, proto, src, dst, sport, dport, flags, pl, frag, seq, app in it:
                n += 1
                at_end = prev_at_end
                prev_at_end = False
                if frag:
                    # Every fragment of a datagram (the first one too) counts in one portless
                    # flow of its address pair: capture shards fragments by addresses, so this
                    # keeps the result the same with any number of decoders.
                    sport = dport = flags = 0
                if (
                    prev is not None
                    and sport == prev_sport
                    and dport == prev_dport
                    and src == prev_src
                    and dst == prev_dst
                    and proto == prev_proto
                    and prev[ALIVE]
                ):
                    st = prev
                    fwd = prev_fwd
                elif (
                    prev is not None
                    and sport == prev_dport
                    and dport == prev_sport
                    and src == prev_dst
                    and dst == prev_src
                    and proto == prev_proto
                    and prev[ALIVE]
                ):
                    st = prev
                    fwd = not prev_fwd
                else:
                    at_end = False
                    if src < dst or (src == dst and sport < dport):
                        key = (proto, src, sport, dst, dport)
                        fwd = True
                    else:
                        key = (proto, dst, dport, src, sport)
                        fwd = False
                    st = flows.get(key)
                    if st is None:
                        prev = arrive(None, key, fwd, ts, wl, proto, src, dst, sport, dport, flags, app, pl, seq)
                        prev_src, prev_dst, prev_sport, prev_dport, prev_proto, prev_fwd = (
                            src, dst, sport, dport, proto, fwd
                        )
                        prev_at_end = True
                        continue
                    prev = st
                    prev_src, prev_dst, prev_sport, prev_dport, prev_proto, prev_fwd = (
                        src, dst, sport, dport, proto, fwd
                    )
                # the times as C doubles in the compiled twin (t, last, idle, upd: _table_c.pxd)
                t = ts
                last = st[LAST]
                idle = st[IDLE]
                if t - last > idle or (flags & 2 and proto == 6 and tcp_state.is_new_connection(st[STATE], flags)):
                    prev = arrive(st, st[KEY], fwd, ts, wl, proto, src, dst, sport, dport, flags, app, pl, seq)
                    prev_at_end = True
                    continue
                upd = st[NEXT_UPD]
                if t >= upd:
                    due(st, ts)
                out = fwd is st[INIT_FIRST]
                if proto == 6:
                    if flags & 7 or st[STATE] is not established:
                        tcp(st, flags, out, ts)
                    if pl:
                        _seqs(st, out, seq + (flags >> 1 & 1), pl)  # data on a SYN follows it
                if out:
                    st[BOUT] += wl
                    st[POUT] += 1
                else:
                    st[BIN] += wl
                    st[PIN] += 1
                if t > last:
                    st[LAST] = ts
                if not at_end:
                    # the flow's own key: its bytes hash once, and the LRU finds it by identity
                    move_to_end(st[LRU], st[KEY])
                prev_at_end = True
                if not st[DIRTY]:
                    st[DIRTY] = True
                    if st[NEXT_UPD] != inf:  # updates off: no timer to keep
                        push(updates, (st[NEXT_UPD], nxt(), st))
                if app is not None:
                    app_fields(st, app, ts, False)
            break
        except (TypeError, ValueError, IndexError, KeyError):
            # a record of the wrong shape or types: count it, go on with the next one
            self.bad_records += 1
    return n


_move_to_end = OrderedDict.move_to_end


def _seqs(st: list, out: bool, seq: int, pl: int) -> None:
    """Count retransmitted and out-of-order data segments of one direction (mod 2**32).

    A segment at or past the next expected sequence number advances it (a jump leaves a
    hole, at most MAX_HOLES kept per direction); one that starts before it is out of order
    when it falls in a hole, else a retransmission. Wireshark's heuristics (timing, window
    probes, keep-alives) are not copied: these are counts for a flow summary.
    """
    sq = st[SEQ]
    if sq is None:
        sq = st[SEQ] = [None, None, [], [], 0, 0]
    d = 0 if out else 1
    nxt = sq[d]
    end = (seq + pl) & 0xFFFFFFFF
    if nxt is None:
        sq[d] = end
        return
    ahead = (seq - nxt) & 0xFFFFFFFF
    if ahead < 0x80000000:  # at or past the expected byte
        if ahead:
            holes = sq[2 + d]
            if len(holes) < MAX_HOLES:
                holes.append((nxt, seq))
        sq[d] = end
        return
    holes = sq[2 + d]
    for i, (lo, hi) in enumerate(holes):
        if (seq - lo) & 0xFFFFFFFF < (hi - lo) & 0xFFFFFFFF:
            sq[5] += 1
            if (end - hi) & 0xFFFFFFFF < 0x80000000:  # the hole is filled (from seq on)
                if seq == lo:
                    del holes[i]
                else:
                    holes[i] = (lo, seq)
            elif seq == lo:
                holes[i] = (end, hi)
            return
    sq[4] += 1
    if (end - nxt) & 0xFFFFFFFF < 0x80000000:
        sq[d] = end


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("FlowTable",))
