"""The flow table on hand-made records: initiators, TCP states, counts, timers, names."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.names import DnsNames
from services.flowtracker.table import FlowTable
from shared.config import FlowSettings
from shared.localnet import LocalNets
from tests.flowtracker_helpers import FA, PA, SA, A, R, S, dns_answer, rec, tcp_session

C, SRV = "192.168.1.10", "93.184.216.34"


def table(**settings) -> FlowTable:
    settings.setdefault("reorder_window", 0.0)  # events leave as soon as packet time passes them
    return FlowTable(FlowSettings(**settings), LocalMatcher(LocalNets().networks))


def run(records, end=None, **settings) -> list[dict]:
    t = table(**settings)
    t.add(records)
    t.advance(records[-1][1])
    if end is not None:
        t.finish("eos", end)
    return t.take()


def ends(events):
    return [e for e in events if e["ev"] == "end"]


def test_syn_sender_is_initiator_and_counts_go_per_direction():
    events = run(tcp_session(100.0, C, SRV, 40000, 443, wl=100), end=200)
    start, end = events[0], ends(events)[0]
    assert (start["ev"], start["src"], start["sport"], start["dst"], start["dport"]) == (
        "start",
        C,
        40000,
        SRV,
        443,
    )
    assert start["outbound"] is True and start["ipv"] == 4 and start["state"] == "syn_sent"
    assert (end["pkts_out"], end["bytes_out"], end["pkts_in"], end["bytes_in"]) == (
        4,
        60 + 54 + 100 + 60,
        3,
        60 + 300 + 60,
    )
    assert end["state"] == "closed" and end["reason"] == "fin"
    assert end["ts"] == 100.06 + 5.0  # the closed linger, from the last packet


def test_first_packet_syn_ack_makes_its_receiver_the_initiator():
    events = run([rec(10, SRV, C, 443, 40000, flags=SA), rec(10.1, C, SRV, 40000, 443, flags=A)], end=11)
    start = events[0]
    assert (start["src"], start["sport"], start["dst"]) == (C, 40000, SRV)
    assert (start["pkts_out"], start["pkts_in"]) == (0, 1)
    assert ends(events)[0]["state"] == "established" and ends(events)[0]["pkts_out"] == 1


def test_inbound_flow_is_not_outbound_and_midstream_pickup_is_established():
    events = run([rec(1, SRV, C, 5555, 22, flags=PA)], end=2)
    assert events[0]["outbound"] is False and events[0]["state"] == "established"
    assert ends(events)[0]["reason"] == "eos"


def test_tcp_state_walk():
    t = table()
    states = []
    for r in [
        rec(1, C, SRV, 1, 80, flags=S),
        rec(1.1, SRV, C, 80, 1, flags=SA),
        rec(1.2, C, SRV, 1, 80, flags=A),
        rec(1.3, C, SRV, 1, 80, flags=FA),
        rec(1.4, SRV, C, 80, 1, flags=FA),
    ]:
        t.add([r])
        states.append(next(iter(t.flows.values()))[20])
    assert states == ["syn_sent", "syn_received", "established", "fin_wait", "closed"]


def test_rst_ends_after_linger_with_reason_rst_and_stragglers_count():
    t = table(tcp_closed_linger=2.0)
    t.add(
        [rec(1, C, SRV, 1, 80, flags=S), rec(1.1, SRV, C, 80, 1, flags=R), rec(2.0, C, SRV, 1, 80, flags=A)]
    )
    t.advance(3.9)
    assert not ends(t.take())
    t.advance(5.0)
    (end,) = ends(t.take())
    assert (end["reason"], end["state"], end["pkts_out"], end["pkts_in"], end["ts"]) == (
        "rst",
        "reset",
        2,
        1,
        4.0,
    )


def test_new_syn_on_closed_flow_starts_a_new_flow():
    recs = tcp_session(1, C, SRV, 40000, 80) + tcp_session(2, C, SRV, 40000, 80)
    events = run(recs, end=3)
    e = ends(events)
    assert [x["reason"] for x in e] == ["fin", "eos"]
    assert e[0]["ts"] == 2.0 and e[0]["fid"] != e[1]["fid"]
    assert [x["ev"] for x in events].count("start") == 2


def test_idle_timeouts_per_protocol_lazy_and_swept_agree():
    recs = [rec(0, C, "8.8.8.8", 5000, 53, proto=17), rec(0, C, SRV, 0, 0, proto=1)]
    # lazily: a packet after the UDP idle timeout ends the old flow and starts a new one
    t = table(udp_idle=60.0, icmp_idle=30.0)
    t.add([*recs, rec(61, C, "8.8.8.8", 5000, 53, proto=17)])
    t.advance(61)
    lazy = {e["proto"]: e for e in ends(t.take())}
    assert lazy[17]["reason"] == "idle" and lazy[17]["ts"] == 60.0
    assert lazy[1]["ts"] == 30.0  # swept: ICMP idle is 30 s
    assert len(t) == 1
    # swept only: same end time
    t2 = table(udp_idle=60.0)
    t2.add(recs)
    t2.advance(59.9)
    assert all(e["proto"] == 1 for e in ends(t2.take()))
    t2.advance(61)
    assert any(e["proto"] == 17 and e["ts"] == 60.0 for e in ends(t2.take()))


def test_handshake_timeout_is_shorter_than_established():
    t = table(tcp_handshake_idle=30.0, tcp_idle=300.0)
    t.add([rec(0, C, SRV, 1, 80, flags=S), rec(0, C, SRV, 2, 80, flags=PA)])
    t.advance(31)
    (end,) = ends(t.take())
    assert end["sport"] == 1 and end["reason"] == "idle" and end["state"] == "syn_sent"
    assert len(t) == 1


def test_eviction_of_least_recently_seen_flow_at_the_cap():
    t = table(max_flows=2)
    t.add([rec(1, C, SRV, 1, 80, flags=S), rec(2, C, SRV, 2, 80, flags=S), rec(3, C, SRV, 1, 80, flags=S)])
    t.add([rec(4, C, SRV, 3, 80, flags=S)])
    t.advance(4)
    assert not ends(t.take())  # events at the watermark itself wait: more may come at that time
    t.advance(4.5)
    (end,) = ends(t.take())
    assert (end["sport"], end["reason"]) == (2, "evicted")
    assert t.evicted == 1 and len(t) == 2


def test_updates_every_interval_carry_deltas_only_when_something_changed():
    recs = [rec(float(i), C, SRV, 1, 80, flags=PA, wl=100) for i in range(0, 250, 10)]  # 0..240
    recs.append(rec(500.0, C, SRV, 1, 80, flags=PA, wl=100))
    events = run(recs, end=501, update_interval=60.0, tcp_idle=1000.0)
    ups = [e for e in events if e["ev"] == "update"]
    # the packet at 240 is reported at 300; nothing changed 300..480: no updates then
    assert [u["ts"] for u in ups] == [60.0, 120.0, 180.0, 240.0, 300.0]
    assert [u["d_pkts_out"] for u in ups] == [5, 6, 6, 6, 1]  # the first packet went out with the start
    end = ends(events)[0]
    assert end["d_pkts_out"] == 1 and end["pkts_out"] == 26
    assert sum(e["d_bytes_out"] for e in events) == end["bytes_out"] == 2600


def test_dns_names_follow_cname_chain_and_expire_with_ttl():
    answers = [
        ("www.example.com", "CNAME", 30, "edge.cdn.net"),
        ("edge.cdn.net", "CNAME", 30, "e1.cdn.net"),
        ("e1.cdn.net", "A", 30, SRV),
    ]
    recs = [dns_answer(0, C, "8.8.8.8", "www.example.com", answers), rec(1, C, SRV, 40000, 80, flags=S)]
    recs.append(rec(400, C, SRV, 40001, 80, flags=S))  # min TTL 300 s has passed: no name
    events = run(recs, end=401)
    starts = {e["sport"]: e for e in events if e["ev"] == "start"}
    assert (starts[40000]["name"], starts[40000]["name_src"]) == ("www.example.com", "dns")
    assert starts[40001]["name"] == ""


def test_dns_answer_after_the_flow_start_does_not_name_it_retroactively():
    recs = [
        rec(1, C, SRV, 40000, 80, flags=S),
        dns_answer(2, C, "8.8.8.8", "late.example", [("late.example", "A", 60, SRV)]),
    ]
    events = run(recs, end=3)
    assert events[0]["name"] == ""
    assert ends(events)[0]["name"] == "late.example"  # learned before the end: the end carries it


def test_sni_takes_precedence_over_dns_and_arrives_in_an_early_update():
    recs = [dns_answer(0, C, "8.8.8.8", "dns.example", [("dns.example", "A", 600, SRV)])]
    recs += tcp_session(
        1, C, SRV, 40000, 443, app={"tls.sni": "Sni.Example.", "tls.ja4": "t13d_x"}, close=False
    )
    events = run(recs, end=2)
    flow = [e for e in events if e["sport"] == 40000]
    assert (flow[0]["ev"], flow[0]["name"], flow[0]["name_src"]) == ("start", "dns.example", "dns")
    assert flow[1]["ev"] == "update" and flow[1]["ts"] == 1.03
    assert (flow[1]["name"], flow[1]["name_src"]) == ("sni.example", "tls.sni")
    assert flow[1]["app"] == {"tls.sni": "Sni.Example.", "tls.ja4": "t13d_x"}
    assert ends(flow)[0]["name"] == "sni.example"


def test_dns_cache_is_bounded_and_names_are_cleaned():
    names = DnsNames(max_addresses=2)
    for i in range(3):
        names.learn(
            {
                "dns.queries": [[f"n{i}.example", "A"]],
                "dns.answers": [[f"n{i}.example", "A", 60, f"10.0.0.{i}"]],
            },
            0,
        )
    assert (
        len(names) == 2 and names.lookup("10.0.0.0", 1) == "" and names.lookup("10.0.0.2", 1) == "n2.example"
    )
    names.learn({"dns.queries": [["bad\x07name", "A"]], "dns.answers": [["bad\x07name", "A", 60, "::1"]]}, 0)
    assert names.lookup("::1", 1) == "bad\\x07name"


def test_bad_records_are_counted_and_skipped():
    t = table()
    t.add(
        [
            ("junk",),
            rec(1, C, SRV, 1, 80, flags=S),
            (0, "x", 60, 6, b"\x01" * 3, b"\x02" * 3, 1, 2, 0, 0, 0, 0, None),
        ]
    )
    assert t.bad_records == 2 and t.flows_started == 1


def test_an_answer_repeated_ahead_of_time_does_not_push_out_the_one_an_earlier_event_needs():
    """Records are taken before the watermark lets their events out: by the time an event at t=10
    asks for its name, the same name may have been answered many more times after t=10."""
    names = DnsNames()

    def answer(ts, name="sip.example", addr="198.51.100.7"):
        names.learn({"dns.queries": [[name, "A"]], "dns.answers": [[name, "A", 60, addr]]}, ts)

    answer(10.0)
    for i in range(1, 20):
        answer(10.0 + i * 30)  # re-resolved every 30 s, within the (300 s minimum) lifetime
    assert names.lookup("198.51.100.7", 10.5) == "sip.example"
    assert names.lookup("198.51.100.7", 9.9) == ""  # not before it was first answered
    assert names.lookup("198.51.100.7", 10.0 + 19 * 30 + 299) == "sip.example"
    # different names for one address are each kept, and looked up as of their time
    answer(1000.0, name="other.example")
    assert names.lookup("198.51.100.7", 870.0) == "sip.example"  # the merged entry lasts to 880
    assert names.lookup("198.51.100.7", 1000.0) == "other.example"


def test_with_updates_off_no_update_timers_pile_up():
    table = FlowTable(FlowSettings(update_interval=0))
    for i in range(200):
        table.add(tcp_session(1.0 + i, "10.0.0.1", "192.0.2.9", 40000 + i, 443, close=False))
    table.advance(500.0)
    events = table.take()
    assert not table.updates  # one never-due timer per flow used to stay in the heap
    assert {e["ev"] for e in events} == {"start", "end"}


def test_a_dns_flow_keeps_the_first_name_it_asked_for():
    table = FlowTable()
    table.add(
        [
            dns_answer(
                1.0, "10.0.0.1", "10.0.0.53", "Www.Example.ORG.", [("www.example.org", "A", 60, "192.0.2.1")]
            )
        ]
    )
    table.finish("eos", 2.0)
    (end,) = [e for e in table.take() if e["ev"] == "end"]
    assert end["app"]["dns.query"] == "www.example.org"


def test_a_long_flow_keeps_the_name_its_peer_had_while_it_ran_with_updates_off():
    """The answer comes mid-flow and expires (300 s minimum lifetime) long before the flow ends: the
    end event still carries the name, as an update would have with updates on."""
    table = FlowTable(FlowSettings(update_interval=0))
    keepalives = [
        rec(2.0 + 30 * i, "10.0.0.1", "192.0.2.44", 40001, 443, flags=A if i else S) for i in range(40)
    ]
    answer = dns_answer(
        100.0, "10.0.0.1", "10.0.0.53", "long.example", [("long.example", "A", 60, "192.0.2.44")]
    )
    table.add([*keepalives[:4], answer, *keepalives[4:]])
    table.finish("eos", 2000.0)
    events = [e for e in table.take() if e["dport"] == 443]
    assert [e["ev"] for e in events] == ["start", "end"]
    start, end = events
    assert start["name"] == ""  # not named before the answer
    assert end["last"] - 100.0 > 1000  # the answer had expired long before the end
    assert (end["name"], end["name_src"]) == ("long.example", "dns")
    # a flow that starts after the answer expired is not named by it
    table.add([rec(3000.0, "10.0.0.1", "192.0.2.44", 40002, 443, flags=S)])
    table.finish("eos", 3100.0)
    (late,) = [e for e in table.take() if e["ev"] == "end" and e["sport"] == 40002]
    assert late["name"] == ""


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from([b"\x0a\x00\x00\x01", b"\xc0\x00\x02\x07", bytes(16)]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(st.tuples(*([_ANY] * 13)), max_size=30))
def test_records_of_any_shape_never_stop_the_table(records):
    """Records come from a decoder over a socket: a bad one is counted, never raised."""
    table = FlowTable()
    table.add(records)
    table.add([rec(5.0, "10.0.0.1", "192.0.2.1", 40000, 443, flags=S)])  # and it goes on
    table.advance(10.0)
    table.finish("eos", 20.0)
    assert table.records + table.bad_records >= len(records) + 1
    assert any(e["dport"] == 443 and e["ev"] == "end" for e in table.take())


def test_a_record_with_ports_of_the_wrong_type_is_counted_not_raised_at_release():
    """Hypothesis found it: a None port reached the event heap, whose (time, key) order then
    compared None with an int. Such a record is bad, and counted."""
    table = FlowTable()
    bad = (0, 5.0, 60, 6, b"\x0a\x00\x00\x01", b"\xc0\x00\x02\x01", None, 443, 2, 0, 0, 0, None)
    good = rec(5.0, "10.0.0.1", "192.0.2.1", 40000, 443, flags=S)
    table.add([bad, good])
    table.advance(30.0)
    table.finish("eos", 40.0)
    assert table.bad_records == 1
    assert [e["sport"] for e in table.take() if e["ev"] == "end"] == [40000]


def test_a_flood_of_new_flows_holds_at_most_max_pending_events_and_loses_none():
    """10,000 new flows in one second of packet time against a 10 s reorder window: the waiting
    events stay within their bound, the oldest leave early (counted), in time order, and every
    flow's start still comes out exactly once."""
    t = FlowTable(FlowSettings(reorder_window=10.0, max_pending_events=1000))
    records = [
        rec(1.0 + i * 1e-4, f"10.1.{i >> 8}.{i & 255}", "192.0.2.1", 40000 + i, 443, flags=S)
        for i in range(10_000)
    ]
    peak, out = 0, []
    for i in range(0, len(records), 500):
        t.add(records[i : i + 500])
        t.advance(records[i + 499][1])
        peak = max(peak, t.waiting)
        out += t.take()
    assert peak <= 1000 and t.release_forced >= 8000
    assert [e["ts"] for e in out] == sorted(e["ts"] for e in out)
    t.finish("eos", 2.0)
    out += t.take()
    starts = [e["sport"] for e in out if e["ev"] == "start"]
    assert sorted(starts) == list(range(40000, 50000))


def _lru_order(t: FlowTable) -> list[int]:
    """The UDP flows' ports, least recently seen first (the order idle ends and evictions take)."""
    return [key[2] if key[2] != 53 else key[4] for key in t.lru_udp]


def _udp(ts, port, back=False):
    return rec(ts, SRV, C, 53, port, proto=17) if back else rec(ts, C, SRV, port, 53, proto=17)


def test_the_lru_keeps_the_order_of_last_packets_when_a_flow_repeats():
    """A record of the flow of the record before does not move it in its LRU (it is last
    already); one after another flow's record does, either way round, and a flow started
    again after a bad record is moved too. Checked on the table's loop and on packed records
    read in place (services/flowtracker/packed_records.py), compiled or not."""
    from services.flowtracker import packed_records
    from shared import packed

    steps = [
        ([_udp(1, 1001), _udp(2, 1001), _udp(3, 1002), _udp(4, 1001)], [1002, 1001]),
        ([_udp(5, 1002), _udp(6, 1002, back=True)], [1001, 1002]),
        ([_udp(7, 1001, back=True), _udp(8, 1003), _udp(9, 1001)], [1002, 1003, 1001]),
        ([_udp(10, 1002), _udp(11, 1003), _udp(12, 1003, back=True)], [1001, 1002, 1003]),
    ]
    for by_reference in (False, True):
        t = table()
        for records, want in steps:
            if by_reference:
                body = packed.pack_records(records)
                assert body is not None
                packed_records.add_records(t, packed_records.refs_of(body))
            else:
                t.add(records)
            assert _lru_order(t) == want, (by_reference, records[0][1])


def test_a_flow_whose_record_failed_midway_is_still_moved_by_its_next_record():
    """A record the table gives up on after finding its flow (here a sequence number that is not
    a number) leaves the flow where it was: the flow's next record must move it, though it
    follows a record of the same flow."""

    def session(t0, port):
        return [rec(t0, C, SRV, port, 443, flags=S), rec(t0 + 0.01, SRV, C, 443, port, flags=SA),
                rec(t0 + 0.02, C, SRV, port, 443, flags=A)]  # fmt: skip

    t = table()
    t.add(session(1.0, 40001) + session(2.0, 40002))
    assert [key[4] if key[2] == 443 else key[2] for key in t.lru_tcp] == [40001, 40002]
    data = rec(3.0, C, SRV, 40001, 443, flags=PA, wl=154)
    broken = data[:11] + ("not a number",) + data[12:]
    t.add([rec(2.9, C, SRV, 40002, 443, flags=A), broken, rec(3.1, C, SRV, 40001, 443, flags=A)])
    assert t.bad_records == 1
    assert [key[4] if key[2] == 443 else key[2] for key in t.lru_tcp] == [40002, 40001]
