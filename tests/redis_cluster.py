"""A real Redis Cluster for tests: 3 masters + 3 replicas of redis-server on free local ports.

Started with ``redis-server --cluster-enabled yes`` and joined by ``redis-cli --cluster create``,
as an operator would; torn down (every process it started, by pid) when the test is done.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.pipeline_helpers import wait_for

NODE_TIMEOUT_MS = 1500  # a dead master is failed over within ~2-4 s


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster-bus ports (port + 10000) are free too."""
    out: list[int] = []
    rng = random.Random()
    while len(out) < n:
        port = rng.randrange(20000, 30000)
        if port not in out and _port_free(port) and _port_free(port + 10000):
            out.append(port)
    return out


class RedisClusterFixture:
    """redis-server processes forming one cluster (3 + 3 by default); ``url`` names one node."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        self.n_masters = masters
        self.ports = cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            self._create(replicas)
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _create(self, replicas: int) -> None:
        for port in self.ports:
            self._start(port)
        for port in self.ports:
            wait_for(
                lambda p=port: self._cli(p, "ping").strip() == "PONG", 30, what=f"redis-server on {port}"
            )
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
            + ["--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for port in self.ports:
            wait_for(lambda p=port: self.healthy(p), 120, interval=0.2, what=f"cluster state ok on {port}")
        wait_for(self._replicas_synced, 120, interval=0.2, what="every replica in sync")

    def _replicas_synced(self) -> bool:
        """Every master has an online replica: one that never synced cannot take over."""
        masters = self.masters()
        return len(masters) == self.n_masters and all(
            "state=online" in self._cli(p, "info", "replication") for p in masters
        )

    def _start(self, port: int) -> None:
        data = self.directory / str(port)
        data.mkdir(parents=True, exist_ok=True)
        log = open(data / "redis.log", "ab")  # noqa: SIM115 - kept for the process's life
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            + ["--cluster-config-file", str(data / "nodes.conf"), "--dir", str(data)]
            + ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "no", "--save", ""]
            + ["--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"]
            + ["--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    @staticmethod
    def _cli(port: int, *args: str) -> str:
        proc = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.stdout

    def healthy(self, port: int) -> bool:
        """``cluster info`` on ``port`` says the cluster is ok (every slot served)."""
        return "cluster_state:ok" in self._cli(port, "cluster", "info")

    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now (a failover changes the list)."""
        out = []
        for line in self._cli(self._alive_port(), "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2]:
                out.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(out)

    def _alive_port(self) -> int:
        return next(p for p, proc in self.procs.items() if proc.poll() is None)

    def master_of(self, key: str) -> int:
        """Port of the master serving ``key``'s slot."""
        slot = int(self._cli(self._alive_port(), "cluster", "keyslot", key).strip())
        for line in self._cli(self._alive_port(), "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no save, like a crashed host."""
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(timeout=30)

    def kill_replicated(self, port: int) -> None:
        """SIGKILL a master once every write it answered has reached its replica.

        Replication is asynchronous: a write the master answered but had not yet sent on is lost
        when its replica takes over (docs/reliability.md), which no client can see or send again,
        so a test of what pktscope does at a failover must not leave that to the timing of the
        kill. Clients' writes are paused first (``CLIENT PAUSE WRITE``: they wait, unanswered,
        and die unanswered with the node, to be sent again), then the replica's processed offset
        must reach the master's. (``WAIT`` cannot tell: it waits only for the asking connection's
        own writes, and redis-cli's connection has none, so it answers at once.)"""
        assert self._cli(port, "client", "pause", "60000", "write").strip() == "OK"
        master = self._replication(port)
        replica = int(dict(item.split("=", 1) for item in master["slave0"].split(","))["port"])
        offset = int(master["master_repl_offset"])
        wait_for(
            lambda: int(self._replication(replica)["slave_repl_offset"]) >= offset,
            10,
            interval=0.02,
            what=f"replica {replica} of {port} catching up to offset {offset}",
        )
        self.kill(port)

    def _replication(self, port: int) -> dict[str, str]:
        """``INFO replication`` of ``port`` as field -> value (``slave0`` is the first replica's)."""
        lines = self._cli(port, "info", "replication").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def wait_failed_over(self, dead: int, timeout: float = 120) -> None:
        """Until a replica has taken the dead master's slots and the cluster says ok again."""
        wait_for(
            lambda: dead not in self.masters() and all(self.healthy(p) for p in self.alive()),
            timeout,
            interval=0.2,
            what=f"failover of {dead}",
        )

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def alive_url(self) -> str:
        """A URL naming a node that still runs (``url``'s node may be the one a test killed)."""
        return f"redis://127.0.0.1:{self.alive()[0]}/0"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=15)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterFixture]:
    """A running 3-master/3-replica cluster for the ``with`` block; every node stopped after."""
    if shutil.which("redis-cli") is None:
        raise RuntimeError("redis-cli is needed to create a Redis Cluster")
    cluster = None
    try:
        cluster = RedisClusterFixture(directory)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
