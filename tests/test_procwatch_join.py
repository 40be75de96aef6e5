"""The join of flows with socket-owner facts (services/procwatch/join.py) and cgroup names."""

from __future__ import annotations

from services.procwatch.cgroups import container_id
from services.procwatch.join import SocketOwners

T = 1_800_000_000.0


def fact(
    pid: int,
    ts: float,
    proto: int = 6,
    lip: str = "10.0.0.1",
    lport: int = 40000,
    rip: str = "",
    rport: int = 0,
    **kw,
):
    return {
        "proto": proto,
        "lip": lip,
        "lport": lport,
        "rip": rip,
        "rport": rport,
        "ts": ts,
        "proc": {"pid": pid},
        **kw,
    }


def owner(table: SocketOwners, *args, **kw) -> int | None:
    found = table.lookup(*args, **kw)
    return None if found is None else found["proc"]["pid"]


def test_port_reused_by_another_process_goes_by_time():
    t = SocketOwners()
    t.add(fact(100, T, rip="1.1.1.1", rport=443))
    t.add(fact(200, T + 60, rip="1.1.1.1", rport=443))  # same 5-tuple a minute later
    assert owner(t, 6, "10.0.0.1", 40000, "1.1.1.1", 443, at=T + 0.001) == 100
    assert owner(t, 6, "10.0.0.1", 40000, "1.1.1.1", 443, at=T + 60.001) == 200
    assert owner(t, 6, "10.0.0.1", 40000, "1.1.1.1", 443, at=T - 30) is None  # before any owner


def test_peer_and_local_address_must_fit():
    t = SocketOwners()
    t.add(fact(100, T, rip="1.1.1.1", rport=443))
    assert owner(t, 6, "10.0.0.1", 40000, "8.8.8.8", 443, at=T) is None
    assert owner(t, 6, "10.0.0.2", 40000, "1.1.1.1", 443, at=T) is None
    assert owner(t, 17, "10.0.0.1", 40000, "1.1.1.1", 443, at=T) is None  # another protocol


def test_unconnected_udp_socket_on_the_wildcard_address_owns_its_port():
    t = SocketOwners()
    t.add(fact(300, T, proto=17, lip="", lport=5353))
    assert owner(t, 17, "192.168.1.5", 5353, "224.0.0.251", 5353, at=T + 5) == 300


def test_icmp_has_no_ports_and_goes_by_peer():
    t = SocketOwners()
    t.add(fact(1, T, proto=1, lip="", lport=1, rip="9.9.9.9", sock_type=3))
    t.add(fact(2, T, proto=1, lip="", lport=7, rip="1.1.1.1", sock_type=2))
    assert owner(t, 1, "10.0.0.1", 0, "9.9.9.9", 0, at=T) == 1
    assert owner(t, 1, "10.0.0.1", 0, "1.1.1.1", 0, at=T) == 2
    t.add(fact(3, T, proto=58, lip="", lport=58, rip="fd00::1", sock_type=3))
    assert owner(t, 58, "fd00::2", 0, "fd00::1", 0, at=T) == 3


def test_a_fact_stamped_a_little_after_the_first_packet_still_counts():
    t = SocketOwners(slack=2.0)
    t.add(fact(100, T + 0.5, rip="1.1.1.1", rport=443))
    assert owner(t, 6, "10.0.0.1", 40000, "1.1.1.1", 443, at=T) == 100
    assert owner(t, 6, "10.0.0.1", 40000, "1.1.1.1", 443, at=T - 5) is None


def test_the_table_is_bounded():
    t = SocketOwners(max_facts=100, per_key=4)
    for i in range(1000):
        t.add(fact(i, T + i, lport=1000 + i % 300, rip="1.1.1.1", rport=443))
    assert len(t) == 100
    assert t.counters["evicted"] > 0
    assert owner(t, 6, "10.0.0.1", 1000 + 999 % 300, "1.1.1.1", 443, at=T + 999) == 999


def test_a_refreshed_send_fact_is_not_stored_twice():
    t = SocketOwners()
    proc = {"pid": 5, "started": T}
    for i in range(10):
        t.add(
            {
                "proto": 17,
                "lip": "",
                "lport": 999,
                "rip": "1.1.1.1",
                "rport": 53,
                "ts": T + i,
                "kind": "send",
                "proc": proc,
            }
        )
    assert len(t) == 1


def test_container_ids_from_cgroup_paths():
    cid = "3f4e2a" + "0" * 58
    assert container_id(f"/system.slice/docker-{cid}.scope") == cid
    assert container_id(f"/docker/{cid}") == cid
    assert container_id(f"/machine.slice/libpod-{cid}.scope/container") == cid
    assert (
        container_id(f"/system.slice/containerd.service/kubepods-burstable-pod1.slice:cri-containerd:{cid}")
        == cid
    )
    assert container_id(f"/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{cid}.scope") == cid
    pod = "0d6b1a3e-5a2c-4f0e-9d8b-1c2d3e4f5a6b"
    assert container_id(f"/kubepods/besteffort/pod{pod}") == pod
    assert container_id("/user.slice/user-1000.slice/session-2.scope") == ""


def test_a_udp_port_reused_at_once_by_the_next_program_stays_with_each_flow():
    """Short-lived programs sending to one peer: the kernel may give a freed UDP port to the
    next socket within milliseconds. Each fact is written microseconds after its own socket's
    first datagram; each flow belongs to the program whose socket was born closest to it."""
    t = SocketOwners()
    for i, pid in enumerate((100, 200, 300)):
        t.add(fact(pid, T + i * 0.005 + 0.00003, proto=17, lip="", lport=41000, rip="127.0.0.1", rport=9999))
    for i, pid in enumerate((100, 200, 300)):
        assert owner(t, 17, "127.0.0.1", 41000, "127.0.0.1", 9999, at=T + i * 0.005) == pid


def test_a_send_seen_again_keeps_the_time_its_socket_was_born():
    """A long-lived socket's refreshed fact still ends before a later socket on its port is born."""
    t = SocketOwners()
    proc = {"pid": 5, "started": T}
    for i in range(5):  # sends every 2 s for 8 s
        t.add(fact(5, T + 2 * i, proto=17, lip="", lport=999, rip="1.1.1.1", rport=53, kind="send", proc=proc))
    t.add(fact(6, T + 30, proto=17, lip="", lport=999, rip="1.1.1.1", rport=53, kind="send"))
    assert owner(t, 17, "10.0.0.1", 999, "1.1.1.1", 53, at=T) == 5
    assert owner(t, 17, "10.0.0.1", 999, "1.1.1.1", 53, at=T + 29.9999) == 6  # born 0.1 ms after
    assert owner(t, 17, "10.0.0.1", 999, "1.1.1.1", 53, at=T + 10) == 5  # the other not born yet


def test_a_restarted_listener_owns_the_connections_after_its_start_only():
    t = SocketOwners()
    t.add(fact(1, T - 1000, lip="", lport=8080, kind="listen"))
    t.add(fact(2, T - 10, lip="", lport=8080, kind="listen"))
    assert owner(t, 6, "10.0.0.1", 8080, "10.0.0.9", 50000, at=T) == 2
    assert owner(t, 6, "10.0.0.1", 8080, "10.0.0.9", 50000, at=T - 500) == 1
