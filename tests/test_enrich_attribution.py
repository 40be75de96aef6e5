"""Process attribution with real sockets and real child processes (no mocks of the OS)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time

import psutil
import pytest

from services.detector.enrich.attribution import ProcessAttributor

SELF_EXE = psutil.Process().exe()


@pytest.fixture
def server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield srv
    srv.close()


@pytest.fixture
def netclient(tmp_path):
    """A copy of bash under its own name: its exe path proves whose socket was found."""
    exe = tmp_path / "netclient"
    shutil.copy2("/bin/bash", exe)
    return exe


@contextlib.contextmanager
def connected_child(exe, srv: socket.socket, host: str = "127.0.0.1"):
    """Start ``exe`` (bash) connecting to ``srv``; yield (child, accepted socket, child's local port)."""
    port = srv.getsockname()[1]
    child = subprocess.Popen(
        [str(exe), "-c", f"exec 3<>/dev/tcp/{host}/{port}; read -r _"],
        stdin=subprocess.PIPE,
    )
    srv.settimeout(10)
    conn, peer = srv.accept()
    try:
        yield child, conn, peer[1]
    finally:
        conn.close()
        child.stdin.close()
        child.wait(timeout=10)


def test_client_and_server_side_of_a_loopback_flow(server, netclient):
    attr = ProcessAttributor()
    sport = server.getsockname()[1]
    with connected_child(netclient, server) as (child, _conn, cport):
        info = attr.lookup(6, "127.0.0.1", cport, "127.0.0.1", sport)
        assert info is not None
        assert info.pid == child.pid
        assert info.exe == str(netclient)
        assert info.name == "netclient"
        assert "/dev/tcp/127.0.0.1" in info.cmdline
        assert info.parent_exe == SELF_EXE
        assert info.username == "root"
        assert info.exe_deleted is False
        assert info.create_time == psutil.Process(child.pid).create_time()
        # The server's accepted socket has the same two ends swapped: it belongs to us.
        server_side = attr.lookup(6, "127.0.0.1", sport, "127.0.0.1", cport)
        assert server_side is not None and server_side.pid == os.getpid()
        # Without the remote end the local end alone decides.
        assert attr.lookup(6, "127.0.0.1", cport).pid == child.pid
        assert attr.counters["scans"] == 1  # everything after the first miss came from the cache
        assert attr.counters["cache_hits"] == 2
        assert attr.counters["attributed"] == 3
        # A remote end that does not match the connected socket is not that flow (a miss: rescan).
        assert attr.lookup(6, "127.0.0.1", cport, "127.0.0.1", sport + 1) is None
        assert attr.counters["scans"] == 2


def test_ipv6_and_v4_mapped_dual_stack():
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen(4)
    sport = srv.getsockname()[1]
    try:
        v6 = socket.create_connection(("::1", sport))
        v4 = socket.create_connection(("127.0.0.1", sport))
        attr = ProcessAttributor()
        me = os.getpid()
        v6port, v4port = v6.getsockname()[1], v4.getsockname()[1]
        assert attr.lookup(6, "::1", v6port, "::1", sport).pid == me
        assert attr.lookup(6, "127.0.0.1", v4port, "127.0.0.1", sport).pid == me
        # The accepted side of the IPv4 connection is listed by the kernel as ::ffff:127.0.0.1.
        assert attr.lookup(6, "127.0.0.1", sport, "127.0.0.1", v4port).pid == me
        assert attr.lookup(6, "::ffff:127.0.0.1", sport, "::ffff:127.0.0.1", v4port).pid == me
        # The dual-stack listener on [::] owns inbound flows on its port with no accepted socket yet.
        assert attr.lookup(6, "127.0.0.1", sport, "127.0.0.1", 1).pid == me
        v6.close()
        v4.close()
    finally:
        srv.close()


def test_udp_socket_bound_to_the_wildcard_address():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    port = udp.getsockname()[1]
    try:
        attr = ProcessAttributor()
        info = attr.lookup(17, "127.0.0.1", port, "127.0.0.1", 53)
        assert info is not None and info.pid == os.getpid()
        assert attr.lookup(6, "127.0.0.1", port) is None  # same port, other protocol
    finally:
        udp.close()


def test_a_burst_of_unknown_ports_costs_a_few_scans():
    in_use = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.laddr}
    ports = [p for p in range(40000, 41000) if p not in in_use][:200]
    attr = ProcessAttributor(min_refresh_interval=0.25)
    start = time.monotonic()
    answers = [attr.lookup(6, "127.0.0.9", p, "203.0.113.1", 443) for p in ports]
    elapsed = time.monotonic() - start
    assert answers == [None] * 200
    assert attr.counters["scans"] <= 3
    assert attr.counters["waits"] <= 1
    assert attr.counters["unattributed"] == 200
    assert elapsed < 1.0  # at most one short wait, never one per lookup
    # Asking again for flows that a later scan also missed: answered without scanning.
    time.sleep(0.3)
    scans = attr.counters["scans"]
    attr.lookup(6, "127.0.0.9", ports[0], "203.0.113.1", 443)
    attr.lookup(6, "127.0.0.9", ports[0], "203.0.113.1", 443)
    assert attr.counters["scans"] == scans
    assert attr.counters["negative_hits"] == 2


def test_a_connection_opened_just_after_a_scan_is_found_by_waiting(server):
    attr = ProcessAttributor(min_refresh_interval=0.2)
    assert attr.lookup(6, "127.0.0.9", 1, "203.0.113.1", 443) is None  # first scan
    client = socket.create_connection(server.getsockname())
    try:
        start = time.monotonic()
        info = attr.lookup(6, *client.getsockname(), *client.getpeername())
        assert info is not None and info.pid == os.getpid()
        assert attr.counters["waits"] == 1 and attr.counters["scans"] == 2
        assert time.monotonic() - start <= 0.2 + 0.15
    finally:
        client.close()


def test_process_that_exited_after_being_read_is_still_reported(server, netclient):
    attr = ProcessAttributor()
    with connected_child(netclient, server) as (child, _conn, cport):
        assert attr.lookup(6, "127.0.0.1", cport).pid == child.pid
        pid = child.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    info = attr.lookup(6, "127.0.0.1", cport)  # from the cached table and the details read earlier
    assert info is not None and info.pid == pid and info.exe == str(netclient)


def test_process_that_vanished_before_being_read_is_none(server, netclient):
    attr = ProcessAttributor()
    sport = server.getsockname()[1]
    with connected_child(netclient, server) as (_child, _conn, cport):
        # Only the server side is resolved; the scan also saw the child's socket.
        assert attr.lookup(6, "127.0.0.1", sport, "127.0.0.1", cport).pid == os.getpid()
    assert attr.lookup(6, "127.0.0.1", cport, "127.0.0.1", sport) is None
    assert attr.counters["vanished"] == 1
    assert attr.counters["scans"] == 1


def test_deleted_executable_is_flagged(server, netclient):
    attr = ProcessAttributor()
    with connected_child(netclient, server) as (child, _conn, cport):
        assert attr.lookup(6, "127.0.0.1", cport).exe_deleted is False
        os.unlink(netclient)  # a program removing itself after it started
        info = attr.lookup(6, "127.0.0.1", cport)  # cached details, re-checked cheaply
        assert info.pid == child.pid
        assert info.exe_deleted is True
        assert info.exe == str(netclient)  # the path it was started from, without " (deleted)"
        fresh = ProcessAttributor().lookup(6, "127.0.0.1", cport)  # read from scratch
        assert fresh.exe_deleted is True and fresh.exe == str(netclient)


def test_long_command_lines_are_bounded(server, netclient):
    attr = ProcessAttributor()
    port = server.getsockname()[1]
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port}; read -r _"
    child = subprocess.Popen(
        [str(netclient), "-c", script, "x" * 5000, *["arg"] * 3000], stdin=subprocess.PIPE
    )
    server.settimeout(10)
    conn, peer = server.accept()
    try:
        info = attr.lookup(6, "127.0.0.1", peer[1])
        assert info.pid == child.pid
        assert len(info.cmdline) <= 1024 and info.cmdline.endswith("...")
    finally:
        conn.close()
        child.stdin.close()
        child.wait(timeout=10)


def test_bad_input_is_unattributed():
    attr = ProcessAttributor()
    assert attr.lookup(1, "127.0.0.1", 0) is None  # ICMP has no socket owner we can find
    assert attr.lookup(6, "not an ip", 80) is None
    assert attr.lookup(6, "", 80) is None
    assert attr.counters["unattributed"] == 3
    assert attr.counters["scans"] == 0
