"""In-order delivery of the first bytes of one TCP direction.

Policy (documented because IDS evasion depends on it):

* The stream starts at the SYN's sequence number + 1 when the SYN is seen, else at the first
  data segment seen. Arithmetic is modulo 2**32 (wrap-around safe).
* **First copy wins**: bytes already delivered are never changed; a retransmitted or overlapping
  segment only contributes bytes beyond what was delivered, and of two held segments starting at
  the same sequence number the first one is kept (a longer later copy adds only its tail).
* Segments after a hole are held, bounded per stream (bytes and segments) and across all streams
  (``ReassemblyPool.max_total``). When a bound is hit, when the hole is older than ``gap_wait``
  seconds of packet time, or when the stream is flushed (FIN/RST/expiry), the hole is skipped:
  the consumer receives an ``int`` (the number of missing bytes) so it can resynchronise.

``add`` returns a list of pieces in stream order: ``bytes`` for data, ``int`` for a skipped gap.
"""

from __future__ import annotations

from collections import Counter

MASK = 0xFFFFFFFF
WRAP = 1 << 32
HALF = 1 << 31


class ReassemblyPool:
    """Limits shared by every stream of one inspector, and the counters they bump."""

    __slots__ = ("counters", "gap_bytes", "gap_segments", "gap_wait", "max_total", "total")

    def __init__(
        self,
        counters: Counter | None = None,
        *,
        gap_bytes: int = 16384,
        gap_segments: int = 32,
        gap_wait: float = 2.0,
        max_total: int = 32 << 20,
    ) -> None:
        self.counters = counters if counters is not None else Counter()
        self.gap_bytes = gap_bytes
        self.gap_segments = gap_segments
        self.gap_wait = gap_wait
        self.max_total = max_total
        self.total = 0  # bytes held out of order across all streams


class TcpStream:
    """One direction of one TCP connection: holds out-of-order segments, delivers in order."""

    __slots__ = ("gap_since", "next_seq", "pending", "pending_bytes", "pool", "started")

    def __init__(self, pool: ReassemblyPool) -> None:
        self.pool = pool
        self.next_seq: int | None = None
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.gap_since = 0.0
        self.started = False  # data seen: from then on a SYN no longer moves the start

    def syn(self, seq: int) -> None:
        """A SYN fixes the initial sequence number (data starts one after it).

        Until data arrives a later SYN wins: clients retry with a new ISN (and scanners and
        evasion tests send several), and only the one that gets answered carries data.
        """
        if not self.started:
            self.next_seq = (seq + 1) & MASK

    def add(self, ts: float, seq: int, data: bytes) -> list:
        """Accept one segment's payload; return the pieces that became deliverable."""
        nxt = self.next_seq
        if nxt is None:
            nxt = self.next_seq = seq
        self.started = True
        rel = (seq - nxt) & MASK
        if rel == 0 and not self.pending:
            self.next_seq = (seq + len(data)) & MASK
            return [data]
        out: list = []
        pool = self.pool
        if rel >= HALF:  # starts before what we delivered: retransmission or overlap
            behind = WRAP - rel
            if behind >= len(data):
                pool.counters["reasm_retransmissions"] += 1
                data = b""
            else:
                pool.counters["reasm_overlaps"] += 1
                data = data[behind:]
                rel = 0
        if data:
            if rel == 0:
                out.append(data)
                self.next_seq = (nxt + len(data)) & MASK
                if self.pending:
                    self._drain(out)
            else:
                self._hold(ts, seq, data)
                if self.pending and (
                    self.pending_bytes > pool.gap_bytes
                    or len(self.pending) > pool.gap_segments
                    or pool.total > pool.max_total
                ):
                    pool.counters["reasm_bound_gap_skips"] += 1
                    self._skip_gap(out)
                    self.gap_since = ts
        if self.pending and ts - self.gap_since > pool.gap_wait:
            pool.counters["reasm_timeout_gap_skips"] += 1
            self._skip_gap(out)
            self.gap_since = ts  # the next hole's wait starts now
        return out

    def flush(self) -> list:
        """Deliver everything held, skipping holes (on FIN, RST or expiry)."""
        out: list = []
        while self.pending:
            self._skip_gap(out)
        return out

    def release(self) -> None:
        """Forget held segments (the flow is done or dropped), returning their bytes to the pool."""
        if self.pending:
            self.pool.total -= self.pending_bytes
            self.pending = {}
            self.pending_bytes = 0

    # --- internals -----------------------------------------------------------------------
    def _hold(self, ts: float, seq: int, data: bytes) -> None:
        pending = self.pending
        old = pending.get(seq)
        if old is not None:
            if len(old) >= len(data):
                self.pool.counters["reasm_retransmissions"] += 1
                return
            seq = (seq + len(old)) & MASK  # first copy wins: keep only the new tail
            data = data[len(old) :]
            if seq in pending:
                return
        if not pending:
            self.gap_since = ts
        pending[seq] = data
        self.pending_bytes += len(data)
        self.pool.total += len(data)

    def _pop(self, seq: int) -> bytes:
        data = self.pending.pop(seq)
        self.pending_bytes -= len(data)
        self.pool.total -= len(data)
        return data

    def _drain(self, out: list) -> None:
        """Deliver held segments that now touch (or overlap) the delivered edge."""
        pending = self.pending
        while pending:
            nxt = self.next_seq
            best = None
            best_rel = HALF
            for seq in pending:
                rel = (seq - nxt) & MASK
                if rel >= HALF:
                    rel -= WRAP
                if rel < best_rel:
                    best, best_rel = seq, rel
            if best is None or best_rel > 0:
                return
            data = self._pop(best)
            if -best_rel < len(data):
                piece = data[-best_rel:] if best_rel else data
                out.append(piece)
                self.next_seq = (nxt + len(piece)) & MASK
        return

    def _skip_gap(self, out: list) -> None:
        """Jump over the hole before the nearest held segment, then deliver what follows."""
        nxt = self.next_seq
        first = min(self.pending, key=lambda s: ((s - nxt) & MASK) if ((s - nxt) & MASK) < HALF else -1)
        rel = (first - nxt) & MASK
        if 0 < rel < HALF:
            out.append(rel)
            self.pool.counters["reasm_gaps"] += 1
            self.next_seq = first
        self._drain(out)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("ReassemblyPool", "TcpStream"))
