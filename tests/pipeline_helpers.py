"""Helpers for tests that run the whole pipeline under supervisord."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dpkt
import msgpack
import zmq

from shared.config import PipelineConfig
from shared.redis_conn import connect
from shared.redis_keys import Keys
from tests.conftest import BENCH_PCAP

ROOT = Path(__file__).resolve().parent.parent
PKTSCOPE = [sys.executable, "-m", "services.cli.main"]


def pktscope(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `pktscope` CLI to completion and return the finished process."""
    proc = subprocess.run([*PKTSCOPE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"pktscope {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def start_pktscope(*args: str, log: Path) -> subprocess.Popen:
    """Start a long-running `pktscope` command (live run) with its output in ``log``."""
    return subprocess.Popen(
        [*PKTSCOPE, *args],
        cwd=ROOT,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def stop_pktscope(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Ctrl-C a running `pktscope run` and wait for it to stop every process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_summary(proc: subprocess.CompletedProcess) -> dict:
    """The JSON summary line `pktscope run --json` prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stream_order(entry_id: str) -> tuple[int, int]:
    """A Redis stream id as a sort key ("ms-seq": "…-10" comes after "…-2")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eth_ip_tcp(
    src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes = b""
):
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=65535, data=payload)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp
    )
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x01",
        dst=b"\x02\x00\x00\x00\x00\x02",
        type=dpkt.ethernet.ETH_TYPE_IP,
        data=ip,
    )
    return bytes(eth)


def tcp_session(src: str, dst: str, sport: int, dport: int, t0: float, payload: bytes = b"hello") -> list:
    """A complete TCP session (handshake, one data segment each way, FIN) as (ts, bytes) tuples."""
    S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    c, s = 1000, 5000
    return [
        (t0, _eth_ip_tcp(src, dst, sport, dport, S, c, 0)),
        (t0 + 0.01, _eth_ip_tcp(dst, src, dport, sport, S | A, s, c + 1)),
        (t0 + 0.02, _eth_ip_tcp(src, dst, sport, dport, A, c + 1, s + 1)),
        (t0 + 0.03, _eth_ip_tcp(src, dst, sport, dport, A | P, c + 1, s + 1, payload)),
        (t0 + 0.04, _eth_ip_tcp(dst, src, dport, sport, A | P, s + 1, c + 1 + len(payload), b"ok")),
        (t0 + 0.05, _eth_ip_tcp(src, dst, sport, dport, F | A, c + 1 + len(payload), s + 3)),
        (t0 + 0.06, _eth_ip_tcp(dst, src, dport, sport, F | A, s + 3, c + 2 + len(payload))),
    ]


def write_pcap(path: Path, packets: list) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, data in packets:
            w.writepkt(data, ts=ts)
    return path


def kill_service(run_dir: Path, name: str) -> int:
    """kill -9 one supervised service; returns the pid that was killed."""
    from services.cli.supervisor import Supervisor

    info = Supervisor(run_dir).rpc.getProcessInfo(name)
    os.kill(info["pid"], signal.SIGKILL)
    return info["pid"]


def service_pid(run_dir: Path, name: str) -> int:
    from services.cli.supervisor import Supervisor

    return Supervisor(run_dir).rpc.getProcessInfo(name)["pid"]


class LivePipeline:
    """`pktscope run --interface lo` in the background, with a SUB socket on its alerts."""

    def __init__(
        self, tmp: Path, bpf: str, decoders: int = 1, interface: str = "lo", extra: tuple[str, ...] = ()
    ) -> None:
        self.run_dir = tmp / "live"
        self.proc = start_pktscope(
            "run",
            "--interface",
            interface,
            "--bpf",
            bpf,
            "--decoders",
            str(decoders),
            "--run-dir",
            str(self.run_dir),
            "--state-dir",
            str(tmp / "state"),
            "--learning",
            "0",
            *extra,
            log=tmp / "pktscope.log",
        )
        self.log = tmp / "pktscope.log"
        wait_for(lambda: (self.run_dir / "pipeline.json").exists(), 20, what="pipeline.json")
        self.cfg = PipelineConfig.load(self.run_dir / "pipeline.json")
        self.keys = Keys(self.cfg.redis_prefix)
        self.r = wait_for(self._redis, 20, what="the private redis")
        services = {*self.cfg.capture_names(), "flowtracker", "detector", *(f"decoder-{i}" for i in range(decoders))}
        if self.cfg.procwatch_enabled:
            services.add("procwatch")  # reports once its BPF programs are attached (capture waits for it)
        wait_for(lambda: services <= self._reporting(), 30, what=f"services {services} to report")
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.cfg.alerts_pub_endpoint)
        time.sleep(0.3)  # let the subscription reach the PUB socket

    def _redis(self):
        try:
            r = connect(self.cfg.effective_redis_url)
            r.ping()
            return r
        except Exception:
            return None

    def _reporting(self) -> set[str]:
        names = self.r.smembers(self.keys.services())
        return {n for n in names if self.r.hget(self.keys.stats(n), "run_id") == self.cfg.run_id}

    def stats(self, service: str) -> dict:
        return self.r.hgetall(self.keys.stats(service))

    def next_alert(self, timeout: float) -> dict | None:
        if self.sub.poll(int(timeout * 1000)):
            kind, body = self.sub.recv_multipart()
            alert = msgpack.unpackb(body, raw=False)
            assert alert["kind"] == kind.decode()
            return alert
        return None

    def alerts_for(self, entity: str, timeout: float) -> list[dict]:
        found, deadline = [], time.time() + timeout
        while time.time() < deadline:
            alert = self.next_alert(deadline - time.time())
            if alert and alert["entity"] == entity:
                found.append(alert)
        return found

    def stream(self) -> list[dict]:
        return [json.loads(f["alert"]) for _id, f in self.r.xrange(self.keys.alerts())]

    def stop(self) -> int:
        self.sub.close(linger=0)
        return stop_pktscope(self.proc)


class Server:
    """A TCP server on lo that accepts and holds connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def replay_outputs(tmp, name: str, *extra: str, keep_fid: bool = False) -> tuple[dict, list, list]:
    """`pktscope run --read sv-merged.pcap --learning 0 EXTRA`: its summary, its alerts (sorted JSON
    lines) and its flow log (sorted; flow ids dropped unless ``keep_fid``: shards number their own)."""
    run_dir = tmp / f"run-{name}"
    flow_log = tmp / f"flows-{name}.jsonl"
    proc = pktscope(
        "run",
        "--read",
        str(BENCH_PCAP),
        "--learning",
        "0",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(tmp / f"state-{name}"),
        "--flow-log",
        str(flow_log),
        "--json",
        *extra,
        timeout=600,
    )
    listed = pktscope("alerts", "list", "--json", "--count", "100000", "--run-dir", str(run_dir))
    alerts = sorted(
        json.dumps(
            {k: a[k] for k in ("kind", "entity", "title", "ts", "detail", "destination", "severity")},
            sort_keys=True,
        )
        for a in map(json.loads, listed.stdout.splitlines())
    )
    flows = []
    for line in flow_log.read_text().splitlines():
        event = json.loads(line)
        if not keep_fid:
            event.pop("fid")  # numbered per shard
        flows.append(json.dumps(event, sort_keys=True))
    return read_summary(proc), alerts, sorted(flows)
