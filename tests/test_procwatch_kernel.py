"""The BPF object loads through libbpf (ctypes) and reports what real programs did (root only)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from services.procwatch import events
from services.procwatch.loader import BpfProgram
from services.procwatch.proctable import ProcessTable, wall_offset
from tests.procwatch_helpers import UdpSink, build

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root (CI runs as root)")


def collect(prog: BpfProgram, got: list, until, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not until():
        prog.poll(50)


def test_exec_udp_tcp_and_exit_events_of_a_short_lived_program(short_tmp):
    sender = build(short_tmp, "udpsend")
    tcp = build(short_tmp, "tcpsend")
    got: list = []
    prog = BpfProgram(lambda raw: got.append(events.parse(raw)))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    sink = UdpSink()
    try:
        assert "on_inet_sock_set_state" in prog.attached and "on_exec" in prog.attached
        udp = subprocess.run([str(sender), "127.0.0.1", str(sink.port), "10", "3"], check=True)
        del udp
        p = subprocess.Popen([str(tcp), "127.0.0.1", str(server.getsockname()[1]), "5"])
        conn, peer = server.accept()
        conn.close()
        p.wait(timeout=10)

        def mine(kind, tgid=p.pid):
            return [e for e in got if e is not None and e.kind == kind and e.tgid == tgid]

        collect(prog, got, lambda: mine(events.EV_EXIT) and mine(events.EV_SOCK))
        [execd] = mine(events.EV_EXEC)
        assert execd.filename == str(tcp)
        assert execd.argv == (str(tcp), "127.0.0.1", str(server.getsockname()[1]), "5")
        st = os.stat(tcp)
        assert (execd.ino, execd.size, execd.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
        assert execd.ppid == os.getpid() and execd.uid == 0
        [connect] = mine(events.EV_SOCK)
        assert (connect.proto, connect.laddr, connect.lport) == (6, "127.0.0.1", peer[1])
        assert (connect.raddr, connect.rport) == ("127.0.0.1", server.getsockname()[1])
        assert mine(events.EV_EXIT)
        sends = [
            e
            for e in got
            if e is not None and e.kind == events.EV_SOCK and e.proto == 17 and e.rport == sink.port
        ]
        assert len(sends) == 1  # three datagrams, one fact (rate-limited per socket and peer)
        assert sends[0].raddr == "127.0.0.1" and sends[0].lport > 0 and sends[0].comm == "udpsend"
        assert prog.lost() == {"sock_lost": 0, "proc_lost": 0, "connect_table_full": 0}
    finally:
        prog.close()
        server.close()
        sink.close()


def test_process_table_keeps_facts_of_an_exited_program(short_tmp):
    exe = build(short_tmp, "udpsend")
    table = ProcessTable()
    offset = wall_offset()
    sink = UdpSink()
    got: list = []
    prog = BpfProgram(lambda raw: got.append(events.parse(raw)))
    try:
        p = subprocess.run([str(exe), "127.0.0.1", str(sink.port), "1", "1"], check=True)
        del p
        collect(prog, got, lambda: any(e and e.kind == events.EV_EXIT and e.comm == "udpsend" for e in got))
    finally:
        prog.close()
        sink.close()
    for ev in got:
        if ev is None:
            continue
        wall = ev.ktime / 1e9 + offset
        if ev.kind == events.EV_EXEC:
            table.on_exec(ev, wall)
        elif ev.kind == events.EV_FORK:
            table.on_fork(ev, wall)
        elif ev.kind == events.EV_EXIT:
            table.on_exit(ev, wall)
    [send] = [e for e in got if e and e.kind == events.EV_SOCK and e.comm == "udpsend"]
    rec = table.owner(send, 0.0)
    import hashlib

    assert rec["exe"] == str(exe) and rec["pid"] == send.tgid
    assert rec["sha256"] == hashlib.sha256(exe.read_bytes()).hexdigest()
    assert rec["exited"] > 0 and rec["parent_exe"] == os.path.realpath(f"/proc/{os.getpid()}/exe")
    assert abs(rec["started"] - time.time()) < 60
