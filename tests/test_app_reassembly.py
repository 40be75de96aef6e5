"""TCP reassembly: wrap-around, out of order, overlaps (first copy wins), retransmissions, gaps."""

from __future__ import annotations

from services.decoder.app.reassembly import MASK, ReassemblyPool, TcpStream


def joined(pieces: list) -> bytes:
    assert all(isinstance(p, bytes) for p in pieces)
    return b"".join(pieces)


def test_in_order_after_syn_and_data_on_syn_offset():
    s = TcpStream(ReassemblyPool())
    s.syn(1000)
    assert joined(s.add(0.0, 1001, b"abc")) == b"abc"
    assert joined(s.add(0.0, 1004, b"def")) == b"def"


def test_sequence_wrap_around_with_out_of_order_segments():
    pool = ReassemblyPool()
    s = TcpStream(pool)
    isn = MASK - 4  # data starts 4 bytes before the wrap
    s.syn(isn)
    start = (isn + 1) & MASK
    seg1, seg2, seg3 = b"0123", b"4567", b"89ab"
    assert s.add(0.0, (start + 4) & MASK, seg2) == []  # held: crosses zero later
    assert s.add(0.0, (start + 8) & MASK, seg3) == []
    assert pool.total == 8
    assert joined(s.add(0.0, start, seg1)) == b"0123456789ab"
    assert pool.total == 0 and not s.pending


def test_retransmission_and_overlap_first_copy_wins():
    pool = ReassemblyPool()
    s = TcpStream(pool)
    s.syn(0)
    assert joined(s.add(0.0, 1, b"GET /")) == b"GET /"
    assert s.add(0.0, 1, b"GET /") == []  # full retransmission
    assert pool.counters["reasm_retransmissions"] == 1
    # overlap: the first 3 bytes rewrite delivered data; only the new tail counts
    assert joined(s.add(0.0, 3, b"XXXabc")) == b"abc"
    assert pool.counters["reasm_overlaps"] == 1
    # two held copies at the same place: the first one wins, a longer one adds only its tail
    assert s.add(0.0, 20, b"first") == []
    assert s.add(0.0, 20, b"SECOND!") == []
    out = s.add(0.0, 9, b"0123456789a")
    assert joined(out) == b"0123456789afirstD!"  # "SECOND!" only added its tail "D!"


def test_gap_skipped_after_bound_and_reported_as_int():
    pool = ReassemblyPool(gap_bytes=10, gap_segments=100)
    s = TcpStream(pool)
    s.syn(0)
    s.add(0.0, 1, b"aaaa")
    assert s.add(0.0, 10, b"bbbbbb") == []  # hole of 5 bytes (5..9)
    out = s.add(0.0, 16, b"cccccc")  # held bytes now exceed the bound: skip the hole
    assert out == [5, b"bbbbbb", b"cccccc"]
    assert pool.counters["reasm_gaps"] == 1 and pool.counters["reasm_bound_gap_skips"] == 1
    assert pool.total == 0
    # the late segment is older than what was delivered: dropped
    assert s.add(0.0, 5, b"hole!") == []


def test_gap_skipped_after_wait_and_on_flush():
    pool = ReassemblyPool(gap_wait=1.0)
    s = TcpStream(pool)
    s.syn(0)
    assert s.add(0.0, 100, b"late") == []
    assert s.add(0.5, 200, b"later") == []
    out = s.add(2.0, 300, b"x")  # the first hole is older than gap_wait
    assert out[0] == 99 and out[1] == b"late"
    assert pool.counters["reasm_timeout_gap_skips"] == 1
    rest = s.flush()
    assert rest == [96, b"later", 95, b"x"]
    assert pool.total == 0


def test_segment_count_bound_and_pool_total_bound():
    pool = ReassemblyPool(gap_segments=3, gap_bytes=1 << 20)
    s = TcpStream(pool)
    s.syn(0)
    for i in range(4):
        out = s.add(0.0, 100 + 10 * i, b"z")
    assert out and out[0] == 99
    pool = ReassemblyPool(max_total=8, gap_bytes=1 << 20)
    a, b = TcpStream(pool), TcpStream(pool)
    a.syn(0)
    b.syn(0)
    a.add(0.0, 50, b"12345")
    out = b.add(0.0, 50, b"6789")  # 9 bytes held across both streams > 8
    assert out == [49, b"6789"]
    a.release()
    assert pool.total == 0


def test_without_syn_the_first_segment_starts_the_stream_and_late_syn_retries():
    s = TcpStream(ReassemblyPool())
    assert joined(s.add(0.0, 5000, b"mid-stream")) == b"mid-stream"
    s2 = TcpStream(ReassemblyPool())
    s2.syn(10)
    s2.syn(500)  # a retried SYN with a new ISN before any data: the later one counts
    assert joined(s2.add(0.0, 501, b"x")) == b"x"
