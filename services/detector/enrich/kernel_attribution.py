"""Process attribution from kernel events: the join of flows with procwatch's socket facts.

procwatch publishes one fact per socket event (connect, listen, send) with its owner's process
facts, taken at exec time while the process lived. This attributor subscribes to them, keeps
them in a bounded join table (services/procwatch/join.py) and answers ``lookup`` by 5-tuple and
the flow's first packet time, so a program that exited long before its flow reached the
detector is still named, with its pid, exe, argv, parent, user, cgroup and binary hash.

Facts normally arrive well before the flow (the flow-tracker releases events behind a
packet-time watermark); a miss on a recent flow waits briefly for facts still on their way
(at most ``max_wait``, 0.5 s, per lookup and ``max_wait_share``, 20%, of the time: procwatch may lag
behind on a loaded machine). What is still missing
then goes to the psutil socket-table poll: sockets opened before procwatch started, and every
socket when procwatch runs in psutil mode (BPF could not load; see its stats' ``reason``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import msgpack
import redis
import zmq

from services.detector.enrich.attribution import ProcessAttributor, ProcessInfo
from services.procwatch.join import SocketOwners
from shared.redis_conn import connect
from shared.redis_keys import Keys

TOPIC = b"facts"
RECENT = 10.0  # seconds: a flow this young may still have its fact in flight
MODE_EVERY = 2.0  # seconds between two reads of procwatch's mode from its stats
RCVHWM = 10_000  # messages (each one poll round's facts); the reader thread keeps the queue short


def info_from_fact(fact: dict[str, Any]) -> ProcessInfo | None:
    """The ProcessInfo of a socket fact's owner (None when the fact names no executable)."""
    proc = fact.get("proc")
    if not isinstance(proc, dict):
        return None
    exe = proc.get("exe")
    if not isinstance(exe, str) or not exe:
        return None
    argv = proc.get("argv")
    return ProcessInfo(
        pid=_int(proc.get("pid")),
        exe=exe,
        name=_str(proc.get("comm")),
        cmdline=_str(proc.get("cmdline")),
        username=_str(proc.get("user")),
        parent_exe=_str(proc.get("parent_exe")),
        exe_deleted=proc.get("exe_deleted") is True,
        create_time=float(proc.get("started") or 0.0),
        ppid=_int(proc.get("ppid")),
        cgroup=_str(proc.get("cgroup")),
        container_id=_str(proc.get("container_id")),
        argv=tuple(a for a in argv if isinstance(a, str)) if isinstance(argv, list) else (),
        sha256=_str(proc.get("sha256")),
        source="bpf",
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


class KernelAttributor:
    """``lookup(proto, lip, lport, rip, rport, at) -> ProcessInfo | None``; same interface as
    ProcessAttributor, which it falls back to."""

    def __init__(
        self,
        endpoint: str,
        redis_url: str = "",
        redis_prefix: str = "pktscope",
        fallback: ProcessAttributor | None = None,
        max_wait: float = 0.5,
        max_wait_share: float = 0.2,
        ctx: zmq.Context | None = None,
        redis_cluster: bool = False,
    ) -> None:
        self.owners = SocketOwners()
        self.fallback = fallback
        self.max_wait = max_wait
        self.max_wait_share = max_wait_share
        self._c: Counter[str] = Counter()
        self.sub = (ctx or zmq.Context.instance()).socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self.sub.connect(endpoint)
        # A thread takes facts off the socket as they come, so they are never stale or dropped
        # for want of lookups in a quiet period; lookups and it share the table under a lock.
        self._lock = threading.Condition()
        self._closing = False
        self._reader = threading.Thread(target=self._read_loop, name="procwatch-facts", daemon=True)
        self._redis = connect(redis_url, cluster=redis_cluster) if redis_url else None
        self._stats_key = Keys(redis_prefix).stats("procwatch")
        self._mode = ""
        self._mode_at = -1e18
        self._next_seq: int | None = None
        self._credit = max_wait
        self._credit_at = time.monotonic()
        self._reader.start()

    # --- facts in -------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._closing:
            try:
                if not self.sub.poll(200):
                    continue
            except zmq.ZMQError:
                return
            with self._lock:
                if self._drain():
                    self._lock.notify_all()

    def _drain(self) -> int:
        """Take every fact message waiting on the socket; returns how many facts were added."""
        added = 0
        while True:
            try:
                _topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return added
            except ValueError:
                self._c["bad_messages"] += 1
                continue
            try:
                msg = msgpack.unpackb(body, raw=False)
                seq, facts = msg["seq"], msg["facts"]
            except Exception:
                self._c["bad_messages"] += 1
                continue
            if isinstance(seq, int):
                if self._next_seq is not None and seq > self._next_seq:
                    self._c["messages_lost"] += seq - self._next_seq
                self._next_seq = seq + 1
            for fact in facts if isinstance(facts, list) else ():
                if isinstance(fact, dict) and isinstance(fact.get("ts"), (int, float)):
                    self.owners.add(fact)
                    added += 1
            self._c["facts_in"] += len(facts) if isinstance(facts, list) else 0

    def mode(self) -> str:
        """procwatch's mode as it reported it ("bpf", "psutil", or "" before it reports)."""
        now = time.monotonic()
        if self._redis is not None and now - self._mode_at >= MODE_EVERY:
            self._mode_at = now
            try:
                value = self._redis.hget(self._stats_key, "mode")
                self._mode = value.decode() if isinstance(value, bytes) else (value or "")
            except redis.RedisError:
                pass
        return self._mode

    # --- lookups --------------------------------------------------------------------------------
    def lookup(
        self,
        proto: int,
        local_ip: str,
        local_port: int,
        remote_ip: str = "",
        remote_port: int = 0,
        at: float | None = None,
    ) -> ProcessInfo | None:
        with self._lock:
            fact = self._find(proto, local_ip, local_port, remote_ip, remote_port, at)
            if fact is None and self._may_wait(at):
                fact = self._wait_for(proto, local_ip, local_port, remote_ip, remote_port, at)
        if fact is not None:
            info = info_from_fact(fact)
            if info is not None:
                self._c["attributed"] += 1
                return info
        self._c["kernel_misses"] += 1
        if self.fallback is None:
            self._c["unattributed"] += 1
            return None
        info = self.fallback.lookup(proto, local_ip, local_port, remote_ip, remote_port)
        self._c["fallback_attributed" if info is not None else "unattributed"] += 1
        return info

    def _find(self, proto: int, lip: str, lport: int, rip: str, rport: int, at: float | None) -> dict | None:
        fact = self.owners.lookup(proto, lip, lport, rip, rport, at)
        if fact is None and proto not in (6, 17):
            # ICMP has no ports: a flow's first packet may be the peer's (an ICMPv6 neighbour
            # advertisement ahead of the echo request), so its initiator is the other end
            fact = self.owners.lookup(proto, rip, rport, lip, lport, at)
            self._c["reversed"] += fact is not None
        return fact

    def _may_wait(self, at: float | None) -> bool:
        if at is None or time.time() - at > RECENT or self.mode() != "bpf":
            return False
        now = time.monotonic()
        self._credit = min(self.max_wait, self._credit + (now - self._credit_at) * self.max_wait_share)
        self._credit_at = now
        return self._credit > 0.005

    def _wait_for(
        self, proto: int, lip: str, lport: int, rip: str, rport: int, at: float | None
    ) -> dict[str, Any] | None:
        """Wait (lock held, released while waiting) for the reader thread to bring the fact."""
        start = time.monotonic()
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            fact = self._find(proto, lip, lport, rip, rport, at)
            if fact is not None:
                found.append(fact)
            return fact is not None

        self._lock.wait_for(arrived, timeout=min(self._credit, self.max_wait))
        self._credit -= time.monotonic() - start
        self._c["waits"] += 1
        self._c["found_after_wait" if found else "waited_in_vain"] += 1
        return found[0] if found else None

    def close(self) -> None:
        self._closing = True
        self._reader.join(timeout=1)
        self.sub.close(linger=0)

    @property
    def counters(self) -> dict[str, int]:
        """Its own counters, the join's (join.*) and the psutil fallback's (psutil.*)."""
        out = dict(self._c)
        out["facts"] = len(self.owners)
        out.update({f"join.{k}": v for k, v in self.owners.counters.items()})
        if self.fallback is not None:
            out.update({f"psutil.{k}": v for k, v in self.fallback.counters.items()})
        return out


def process_facts(info: ProcessInfo) -> dict[str, Any]:
    """What a flow-log line says about its process (alerts carry the same under their names)."""
    return {
        "pid": info.pid,
        "ppid": info.ppid,
        "exe": info.exe,
        "argv": list(info.argv),
        "cmdline": info.cmdline,
        "user": info.username,
        "parent_exe": info.parent_exe,
        "cgroup": info.cgroup,
        "container_id": info.container_id,
        "sha256": info.sha256,
        "attribution": info.source,
    }
