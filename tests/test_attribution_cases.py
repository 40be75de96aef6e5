"""Issue 9 acceptance, live: a burst, a network namespace over a veth pair (TCP, UDP, ping; v4 and
v6), fork and cgroup, identity of a short-lived copy, byte counts of `pktscope connections`,
and the psutil fallback."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from services.procwatch.cgroups import cgroup2_root
from tests.netns_helpers import free_octet
from tests.pipeline_helpers import Server, pktscope, wait_for
from tests.procwatch_helpers import HttpResponder, Pipeline, UdpSink, build, copies

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture and BPF need root (CI runs as root)"),
]
TIMEOUT = 90.0  # generous: the machine is shared; normally well under 5 s


def run(argv: list, check: bool = True, explain=None) -> int:
    """Run a test program to its end; on a hang, fail with ``explain()`` (the network's state)."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        state = explain() if explain else ""
        proc.kill()
        proc.wait()
        raise AssertionError(f"{argv} did not end in 60 s\n{state}") from None
    if check:
        assert rc == 0, argv
    return proc.pid


def flow_log_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def http():
    s = HttpResponder()
    yield s
    s.close()


def test_burst_of_200_connections_from_50_programs(short_tmp, http):
    programs = copies(build(short_tmp, "tcpsend"), short_tmp / "bin", "burst", 50)
    flow_log = short_tmp / "flows.jsonl"
    pipe = Pipeline(short_tmp, f"tcp port {http.port}", "--flow-log", str(flow_log))
    try:
        started = time.time()
        procs = []
        for _round in range(4):
            for exe in programs:
                procs.append(subprocess.Popen([str(exe), "127.0.0.1", str(http.port), "100"]))
        launched = time.time() - started
        pids = {p.pid: None for p in procs}
        for p in procs:
            assert p.wait(timeout=60) == 0
        expected = {str(e) for e in programs}
        alerts = pipe.collect("new_process_egress", expected, TIMEOUT)

        def ours() -> list[dict]:
            lines = [e for e in flow_log_lines(flow_log) if e["dport"] == http.port and e["proto"] == 6]
            return lines if len(lines) >= 200 else []

        lines = wait_for(ours, TIMEOUT, what="200 flow-log lines")
        attributed = [e for e in lines if e["process"] and e["process"]["pid"] in pids]
        assert all(e["process"]["exe"] in expected for e in attributed)
        assert len({e["process"]["pid"] for e in attributed}) == len(attributed)  # each flow its own pid
        share = len(attributed) / len(lines)
        assert share >= 0.99, (
            f"{len(attributed)}/{len(lines)} flows attributed (launched in {launched:.2f} s)"
        )
        assert len(alerts) >= 0.99 * len(expected)
        det = pipe.stats("detector")
        # the misses are counted, never silent
        assert "unattributed" in det and int(det["unattributed"]) <= len(lines) - len(attributed) + 2
        assert int(pipe.stats("procwatch").get("sock_lost", 0)) == 0
    finally:
        assert pipe.stop() == 0


class Netns:
    """A network namespace joined to the host by a veth pair, with IPv4 and IPv6 addresses."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.host_if, self.ns_if = f"pks-{tag}", f"pkh{tag}", f"pkn{tag}"
        octet = free_octet("10.213", int(tag[:2], 16))  # not a stale namespace's (tests/netns_helpers.py)
        self.host4, self.ns4 = f"10.213.{octet}.1", f"10.213.{octet}.2"
        # canonical text (a tag "06a0..." must read fd42:9:6a0::2, as flows and alerts print it)
        self.host6, self.ns6 = (str(ipaddress.ip_address(f"fd42:9:{tag[:4]}::{n}")) for n in (1, 2))
        sh = self.sh
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host4}/30", "dev", self.host_if)
        sh("ip", "-6", "addr", "add", f"{self.host6}/64", "dev", self.host_if, "nodad")
        sh("ip", "link", "set", self.host_if, "up")
        self.ns("ip", "addr", "add", f"{self.ns4}/30", "dev", self.ns_if)
        self.ns("ip", "-6", "addr", "add", f"{self.ns6}/64", "dev", self.ns_if, "nodad")
        self.ns("ip", "link", "set", self.ns_if, "up")
        self.ns("ip", "link", "set", "lo", "up")
        self.wait_until_reachable()

    def wait_until_reachable(self, timeout: float = 30.0) -> None:
        """Ping the host's end from inside until it answers: a test's first SYN must not race the
        veth's carrier or the first ARP exchange. Fails with the link and neighbour state."""
        ping = shutil.which("ping")
        if ping is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(self.cmd(ping, "-c1", "-W1", self.host4), capture_output=True)
            if probe.returncode == 0:
                return
        raise AssertionError(f"namespace {self.name} cannot reach {self.host4}:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        """Addresses, routes, neighbours and sockets on both ends, for a failure message."""
        out = []
        for argv in (
            ["ip", "addr", "show", "dev", self.host_if],
            ["ip", "neigh", "show", "dev", self.host_if],
            self.cmd("ip", "addr"),
            self.cmd("ip", "route"),
            self.cmd("ip", "neigh"),
            self.cmd("ss", "-tanp"),
        ):
            done = subprocess.run(argv, capture_output=True, text=True)
            out.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    @staticmethod
    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    def ns(self, *argv: str) -> None:
        self.sh("ip", "netns", "exec", self.name, *argv)

    def cmd(self, *argv) -> list[str]:
        return ["ip", "netns", "exec", self.name, *[str(a) for a in argv]]

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.mark.skipif(
    shutil.which("ip") is None or shutil.which("ping") is None, reason="needs iproute2 and ping"
)
def test_veth_into_a_namespace_tcp_udp_ping_v4_and_v6(short_tmp):
    import socket

    net = Netns()
    servers = [HttpResponder(net.host4), HttpResponder(net.host6, socket.AF_INET6)]
    sinks = [UdpSink(net.host4), UdpSink(net.host6, socket.AF_INET6)]
    tcp = build(short_tmp, "tcpsend")
    udp = build(short_tmp, "udpsend")
    ping = Path(shutil.which("ping") or "/usr/bin/ping").resolve()
    bpf = " or ".join(
        [f"tcp port {s.port}" for s in servers] + [f"udp port {s.port}" for s in sinks] + ["icmp", "icmp6"]
    )
    pipe = Pipeline(short_tmp, bpf, interface=net.host_if)
    try:
        pids: dict[str, int] = {}
        for family, host, server, sink in (
            ("v4", net.host4, servers[0], sinks[0]),
            ("v6", net.host6, servers[1], sinks[1]),
        ):
            [t] = copies(tcp, short_tmp / "bin", f"tcp{family}", 1)
            [u] = copies(udp, short_tmp / "bin", f"udp{family}", 1)
            [p] = copies(ping, short_tmp / "bin", f"ping{family}", 1)
            pids[str(t)] = run(net.cmd(t, host, server.port, 300))
            pids[str(u)] = run(net.cmd(u, host, sink.port, 300, 1))
            pids[str(p)] = run(net.cmd(p, "-c", "1", "-W", "5", host))
        found = pipe.collect("new_process_egress", set(pids), TIMEOUT)
        assert set(found) == set(pids), f"missing {sorted(set(pids) - set(found))}"
        for exe, alert in found.items():
            assert alert["detail"]["pid"] == pids[exe], exe
            assert alert["detail"]["attribution"] == "bpf"
        assert found[str(short_tmp / "bin" / "pingv6-000")]["detail"]["flow"]["proto"] == 58
        assert found[str(short_tmp / "bin" / "udpv6-000")]["detail"]["flow"]["src"] == net.ns6
    finally:
        assert pipe.stop() == 0
        for s in servers + sinks:
            s.close()
        net.close()


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_inbound_connection_is_attributed_to_the_listening_server(short_tmp):
    """A flow from outside (the namespace is not a local network here) to a server on this host:
    its flow-log line names the server that listened and accepted it."""
    net = Netns()
    flow_log = short_tmp / "flows.jsonl"
    tcp = build(short_tmp, "tcpsend")
    # only loopback is local: the namespace's address is "outside"; the veth's own address is local
    pipe = Pipeline(
        short_tmp, "tcp", "--local-net", "127.0.0.0/8", "--flow-log", str(flow_log), interface=net.host_if
    )
    server = HttpResponder(net.host4)  # listens after procwatch started: its listen is seen
    try:
        run(net.cmd(tcp, net.host4, server.port, 100), explain=net.diagnostics)

        def line():
            return [f for f in flow_log_lines(flow_log) if f["dport"] == server.port and f["process"]]

        [flow] = wait_for(line, TIMEOUT, what="the inbound flow's line")
        assert flow["outbound"] is False and flow["src"] == net.ns4
        me = os.path.realpath(f"/proc/{os.getpid()}/exe")
        assert flow["process"]["pid"] == os.getpid() and flow["process"]["exe"] == me
        assert flow["process"]["attribution"] == "bpf"
    finally:
        assert pipe.stop() == 0
        server.close()
        net.close()


def test_forked_child_and_cgroup_path_are_in_the_alert(short_tmp):
    server = HttpResponder()
    forker = build(short_tmp, "forker")
    tcp = build(short_tmp, "tcpsend")
    [parent] = copies(forker, short_tmp / "bin", "parent", 1)
    [child] = copies(tcp, short_tmp / "bin", "child", 1)
    [selfish] = copies(forker, short_tmp / "bin", "selfforker", 1)
    [boxed] = copies(tcp, short_tmp / "bin", "boxed", 1)
    root = cgroup2_root()
    assert root, "no cgroup v2 hierarchy mounted"
    cid = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    group = Path(root) / f"pktscope-test-{uuid.uuid4().hex[:8]}"
    box = group / f"docker-{cid}.scope"
    box.mkdir(parents=True)
    pipe = Pipeline(short_tmp, f"tcp port {server.port}")
    try:
        # 1. the parent forks, the child execs another program that connects
        parent_pid = run([parent, "exec", child, "127.0.0.1", server.port, "10"])
        # 2. the parent forks, the child connects itself (same executable, its own pid)
        selfish_pid = run([selfish, "self", "127.0.0.1", server.port])
        # 3. a program started inside a cgroup the test made (named like a docker container)
        script = f"echo $$ > {box}/cgroup.procs && exec {boxed} 127.0.0.1 {server.port} 10"
        shell_pid = run(["sh", "-c", script])
        found = pipe.collect("new_process_egress", {str(child), str(selfish), str(boxed)}, TIMEOUT)
        d = found[str(child)]["detail"]
        assert d["exe"] == str(child) and d["parent_exe"] == str(parent) and d["ppid"] == parent_pid
        d = found[str(selfish)]["detail"]
        assert d["exe"] == str(selfish) and d["ppid"] == selfish_pid and d["pid"] != selfish_pid
        assert d["parent_exe"] == str(selfish)
        d = found[str(boxed)]["detail"]
        assert d["pid"] == shell_pid  # sh exec'd the program: same pid
        assert d["cgroup"] == "/" + str(box.relative_to(root))
        assert d["container_id"] == cid
    finally:
        assert pipe.stop() == 0
        server.close()
        for _ in range(50):
            try:
                box.rmdir()
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_short_lived_copy_modified_between_runs_raises_identity_change(short_tmp):
    server = HttpResponder()
    [tool] = copies(build(short_tmp, "tcpsend"), short_tmp / "bin", "tool", 1)
    pipe = Pipeline(short_tmp, f"tcp port {server.port}")
    try:
        old_sha = hashlib.sha256(tool.read_bytes()).hexdigest()
        run([tool, "127.0.0.1", server.port, "10"])
        first = pipe.collect("new_process_egress", {str(tool)}, TIMEOUT)
        assert first, "the first run was not attributed"
        # a new version replaces the file (new inode) right after the short run
        replacement = tool.with_suffix(".new")
        shutil.copy2(tool, replacement)
        with open(replacement, "ab") as f:
            f.write(b"\0pktscope identity test v2\0")
        replacement.replace(tool)
        new_sha = hashlib.sha256(tool.read_bytes()).hexdigest()
        run([tool, "127.0.0.1", server.port, "10"])
        changed = pipe.collect("identity_change", {str(tool)}, TIMEOUT)
        assert changed, "no identity_change for the modified short-lived copy"
        d = changed[str(tool)]["detail"]
        assert (d["old_identity"], d["new_identity"]) == (old_sha, new_sha)
    finally:
        assert pipe.stop() == 0
        server.close()


def test_connections_bytes_agree_with_what_the_generators_sent(short_tmp, http):
    sink = UdpSink()
    [udp] = copies(build(short_tmp, "udpsend"), short_tmp / "bin", "udpgen", 1)
    [tcp] = copies(build(short_tmp, "tcpsend"), short_tmp / "bin", "tcpgen", 1)
    config = short_tmp / "settings.json"
    config.write_text(json.dumps({"flow": {"udp_idle": 2.0, "tcp_closed_linger": 1.0}}))
    flow_log = short_tmp / "flows.jsonl"
    pipe = Pipeline(
        short_tmp,
        f"tcp port {http.port} or udp port {sink.port}",
        "--config",
        str(config),
        "--flow-log",
        str(flow_log),
    )
    size, count, tcp_bytes = 1000, 200, 2_000_000
    # the oracle for TCP: tshark's own capture of the same packets (retransmissions included)
    oracle_pcap = short_tmp / "oracle.pcap"
    oracle = subprocess.Popen(
        [
            "tshark",
            "-q",
            "-i",
            "lo",
            "-s",
            "128",
            "-B",
            "64",
            "-f",
            f"tcp port {http.port}",
            "-w",
            str(oracle_pcap),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: oracle_pcap.exists() and oracle_pcap.stat().st_size > 0, 30, what="tshark to start")
    try:
        run([udp, "127.0.0.1", sink.port, size, count])
        run([tcp, "127.0.0.1", http.port, tcp_bytes])
        # (the generator exits 0 only when every sendto succeeded; the sink may drop some under load)

        def rows(exe: Path) -> list[dict]:
            out = pktscope(
                "connections", "--process", exe.name, "--json", "--run-dir", str(pipe.run_dir), timeout=60
            )
            return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

        def settled(exe: Path, at_least: int):
            got = rows(exe)
            return got if got and got[0]["bytes_out"] >= at_least * 0.98 else None

        # bytes are whole captured packets: UDP adds 8 + 20 + 14 (Ethernet on lo) per datagram
        want_udp = count * (size + 8 + 20 + 14)
        [u] = wait_for(lambda: settled(udp, want_udp), TIMEOUT, interval=0.5, what="UDP bytes")
        assert u["process"] == str(udp) and u["destination"] == "127.0.0.1" and u["flows"] == 1
        assert abs(u["bytes_out"] - want_udp) <= 0.02 * want_udp
        # TCP at the same layer: the payload plus, per packet the client sent, Ethernet (14), IPv4
        # (20) and TCP with the timestamp option (32) headers; the SYN's options are 8 bytes longer
        [line] = wait_for(
            lambda: [f for f in flow_log_lines(flow_log) if f["dport"] == http.port],
            TIMEOUT,
            what="the TCP flow",
        )
        # the flow's end event reaches the detector as its flow-log line is written
        [t] = wait_for(
            lambda: settled(tcp, line["bytes_out"] / 0.98), TIMEOUT, interval=0.5, what="TCP bytes"
        )
        assert (t["bytes_out"], t["bytes_in"]) == (line["bytes_out"], line["bytes_in"])
        oracle.terminate()
        oracle.wait(timeout=30)
        lens = subprocess.run(
            ["tshark", "-r", str(oracle_pcap), "-T", "fields", "-e", "frame.len", "-Y", f"tcp.srcport == {line['sport']}"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout.split()  # fmt: skip
        on_wire = sum(int(x) for x in lens)
        assert on_wire >= tcp_bytes + len(lens) * (14 + 20 + 20)  # every payload byte plus headers
        assert abs(t["bytes_out"] - on_wire) <= 0.02 * on_wire
        assert t["flows"] == 1 and t["bytes_in"] > 0
        assert http.received == tcp_bytes
        listed = pktscope("connections", "--since", "10m", "--run-dir", str(pipe.run_dir), timeout=60).stdout
        assert str(udp) in listed and str(tcp) in listed
    finally:
        if oracle.poll() is None:
            oracle.kill()
        assert pipe.stop() == 0
        sink.close()


def test_psutil_fallback_live_and_status_says_psutil(short_tmp):
    server = Server()
    bash = os.path.realpath(shutil.which("bash") or "/bin/bash")
    pipe = Pipeline(short_tmp, f"tcp port {server.port}", "--attribution", "psutil")
    try:
        assert "procwatch" not in pipe.r.smembers(pipe.keys.services())
        child = subprocess.Popen(
            [bash, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{server.port}; read -t 5 -u 3; true"]
        )
        found = pipe.collect("new_process_egress", {bash}, TIMEOUT)
        child.wait(timeout=30)
        assert found, "the held connection was not attributed by the psutil path"
        assert found[bash]["detail"]["pid"] == child.pid
        assert found[bash]["detail"]["attribution"] == "psutil"
        status = pktscope("status", "--run-dir", str(pipe.run_dir), timeout=60).stdout
        assert "attribution: psutil" in status
        assert "attribution: psutil" in pipe.log.read_text()
    finally:
        assert pipe.stop() == 0
        server.close()


def test_auto_mode_falls_back_to_psutil_and_says_why(short_tmp, monkeypatch):
    """Where BPF cannot load (here: the object is missing) the run goes on with psutil and says why."""
    monkeypatch.setenv("PKTSCOPE_PROCWATCH_OBJ", str(short_tmp / "missing.bpf.o"))
    refused = pktscope(
        "run", "-i", "lo", "--attribution", "bpf", "--run-dir", str(short_tmp / "x"), check=False
    )
    assert refused.returncode != 0 and "is not built" in refused.stderr
    server = Server()
    bash = os.path.realpath(shutil.which("bash") or "/bin/bash")
    pipe = Pipeline(short_tmp, f"tcp port {server.port}")
    try:
        child = subprocess.Popen(
            [bash, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{server.port}; read -t 5 -u 3; true"]
        )
        found = pipe.collect("new_process_egress", {bash}, TIMEOUT)
        child.wait(timeout=30)
        assert found and found[bash]["detail"]["pid"] == child.pid
        assert found[bash]["detail"]["attribution"] == "psutil"
        assert pipe.stats("procwatch")["mode"] == "psutil"
        status = pktscope("status", "--run-dir", str(pipe.run_dir), timeout=60).stdout
        assert "attribution: psutil" in status and "is not built" in status
        assert "psutil (kernel events unavailable" in pipe.log.read_text()
    finally:
        assert pipe.stop() == 0
        server.close()
