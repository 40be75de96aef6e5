"""Which local process owns the socket of a flow (live mode, flows of this host only).

Linux exposes no "who owns this 5-tuple" query, so the whole socket table is read with
``psutil.net_connections(kind="inet")`` (``/proc/net/{tcp,udp}{,6}`` plus every process's fd
table: a few milliseconds with a hundred processes, more on busy hosts). The table is kept as a
cache keyed by ``(proto, local_ip, local_port)`` and refreshed only on a miss, at most once per
``min_refresh_interval``, so a burst of new flows costs one or two scans, not one each.

What a miss does (lookups are synchronous, the caller is the detector's single loop):

1. a scan is allowed (the last one started ``min_refresh_interval`` ago or more): scan now;
2. otherwise, when the wait budget allows, sleep until the next scan is allowed (at most
   ``min_refresh_interval``) and scan: this catches connections opened just after the previous
   scan, the common case for the first flows of a newly started program. The budget (a token
   bucket filled at ``max_wait_share`` seconds per second, holding at most one interval) keeps
   the detector from sleeping more than that share of its time when flows keep missing, e.g.
   traffic that has no local socket at all;
3. otherwise return None at once (counted as ``deferred``). A later lookup of the same flow,
   after some scan has run, is answered from that scan.

A flow that is still missing after a scan that started after its first lookup is a genuine
miss: it is answered None without scanning again (negative cache, ``cache_ttl`` seconds).

Matching: the local address and port must match exactly (and the remote ones when given), so on
loopback the client of 127.0.0.1:50000 -> 127.0.0.1:8080 is found for local port 50000 and the
server's accepted socket (local 8080, remote 50000) only for local port 8080. When nothing
matches exactly, an unconnected socket bound to the wildcard address on that port (a UDP
socket on 0.0.0.0:5353, a listener on [::]:8080) owns the flow. IPv4-mapped IPv6 addresses
(dual-stack sockets) are treated as the IPv4 address.

Process details are read once per (pid, create time). A process that exited after the scan
that saw its socket is still reported when its details were read while it was alive;
otherwise (vanished before we could look) the answer is None. Strings are returned as the
kernel gives them: escape control characters before printing them.

Not thread-safe: one instance per thread.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shlex
import socket
import time
from collections import Counter
from typing import NamedTuple

import psutil

from services.procwatch.cgroups import container_id

TCP, UDP = 6, 17
_PROTO_OF_TYPE = {socket.SOCK_STREAM: TCP, socket.SOCK_DGRAM: UDP}
_WILDCARDS = {4: ("0.0.0.0", "::"), 6: ("::",)}

CMDLINE_MAX_CHARS = 1024  # bound what one process can put into every alert it causes
_CMDLINE_MAX_ARGS = 128
_DELETED = " (deleted)"


class ProcessInfo(NamedTuple):
    pid: int
    exe: str  # path of the executable ("" for kernel threads or when unreadable), without " (deleted)"
    name: str
    cmdline: str  # arguments joined shell-style (shlex.join), at most CMDLINE_MAX_CHARS characters
    username: str
    parent_exe: str
    exe_deleted: bool  # the running executable was deleted (or replaced) on disk
    create_time: float = 0.0  # process start, seconds since the epoch: (pid, create_time) is unique
    ppid: int = 0
    cgroup: str = ""  # cgroup v2 path ("0::" line of /proc/PID/cgroup), "" when unknown
    container_id: str = ""  # the container (or pod) the cgroup path names, "" when none
    argv: tuple[str, ...] = ()  # the arguments as the kernel had them (cmdline is their shell form)
    sha256: str = ""  # the executable as it ran, hashed at exec (kernel-event path only)
    source: str = "psutil"  # which path found the owner: psutil or kernel events ("bpf")


_Key = tuple[int, str, int]  # proto, local ip, local port
_Peer = tuple[str, int, int]  # remote ip ("" unconnected), remote port, pid
_Query = tuple[int, str, int, str, int]


@functools.lru_cache(maxsize=65536)
def _norm_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes IPv4; "" when not an address."""
    if not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ""
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def _cmdline_text(args: list[str]) -> str:
    args = [a[:CMDLINE_MAX_CHARS] for a in args[:_CMDLINE_MAX_ARGS]]
    text = shlex.join(args)
    return text if len(text) <= CMDLINE_MAX_CHARS else text[: CMDLINE_MAX_CHARS - 3] + "..."


def _start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot (with the pid, unique); None if gone.

    Read from /proc/PID/stat directly, cheaper than psutil.Process(pid): it tells whether cached
    details still belong to the process with this pid. Zombies count as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the name in (...) may hold spaces and ')'
    try:
        return None if fields[0] == b"Z" else int(fields[19])
    except (IndexError, ValueError):
        return None


def exe_deleted(pid: int, exe: str | None = None) -> bool:
    """True when /proc/PID/exe points at an unlinked file (psutil strips the marker, so read it here).

    With ``exe``, only when that is the path the process was started from (so a reused pid running
    another program does not count).
    """
    try:
        link = os.readlink(f"/proc/{pid}/exe")
        if not link.endswith(_DELETED) or (exe is not None and link[: -len(_DELETED)] != exe):
            return False
        return os.stat(f"/proc/{pid}/exe").st_nlink == 0
    except OSError:
        return False


class ProcessAttributor:
    """``lookup(proto, local_ip, local_port, remote_ip, remote_port) -> ProcessInfo | None``."""

    def __init__(
        self,
        min_refresh_interval: float = 0.25,
        cache_ttl: float = 30.0,
        max_entries: int = 65536,
        max_wait_share: float = 0.2,
    ) -> None:
        self.min_refresh_interval = min_refresh_interval
        self.cache_ttl = cache_ttl
        self.max_entries = max_entries
        self.max_wait_share = max_wait_share
        self.counters: Counter[str] = Counter()
        self.last_scan_seconds = 0.0
        # (proto, local ip, local port) -> (monotonic time of the scan that saw it, its wall time, peers)
        self._sockets: dict[_Key, tuple[float, float, tuple[_Peer, ...]]] = {}
        self._missed: dict[_Query, float] = {}  # query -> monotonic time of its first miss
        # pid -> (info, start time in clock ticks, wall time the details were read)
        self._procs: dict[int, tuple[ProcessInfo, int, float]] = {}
        self._last_scan = -1e18  # monotonic start of the latest scan
        self._wait_credit = min_refresh_interval
        self._credit_at = time.monotonic()

    # --- public -----------------------------------------------------------------------------
    def lookup(
        self,
        proto: int,
        local_ip: str,
        local_port: int,
        remote_ip: str = "",
        remote_port: int = 0,
        at: float | None = None,
    ) -> ProcessInfo | None:
        """The process owning the local end of a TCP (6) or UDP (17) flow, or None.

        ``at`` (the flow's first packet time) is accepted for the kernel-event attributor's
        interface; a socket-table poll only knows the present.
        """
        if proto not in (TCP, UDP):
            self.counters["unattributed"] += 1
            return None
        lip, rip = _norm_ip(local_ip), _norm_ip(remote_ip)
        if not lip:
            self.counters["unattributed"] += 1
            return None
        now = time.monotonic()
        found = self._match(proto, lip, local_port, rip, remote_port, now)
        if found is not None:
            self.counters["cache_hits"] += 1
            return self._attributed(*found)
        query = (proto, lip, local_port, rip, remote_port)
        first_miss = self._missed.get(query)
        if first_miss is not None and first_miss <= self._last_scan and now - first_miss <= self.cache_ttl:
            self.counters["negative_hits"] += 1
            self.counters["unattributed"] += 1
            return None
        if not self._refresh(now):
            if first_miss is None:
                self._remember_miss(query, now)
            self.counters["deferred"] += 1
            self.counters["unattributed"] += 1
            return None
        found = self._match(proto, lip, local_port, rip, remote_port, time.monotonic())
        if found is None:
            self._remember_miss(query, now if first_miss is None else first_miss)
            self.counters["unattributed"] += 1
            return None
        return self._attributed(*found)

    def process_info(self, pid: int, seen_wall: float | None = None) -> ProcessInfo | None:
        """Details of one pid (cached per pid and start time); None when it is gone or unknown.

        ``seen_wall``: when (epoch seconds) the pid was seen owning a socket. Details read after
        that moment from a process started before it describe that owner, even if it has exited
        since (short-lived programs); no /proc read is needed for them.
        """
        cached = self._procs.get(pid)
        if cached is not None and seen_wall is not None and _owned_then(cached, seen_wall):
            return self._still_current(pid, cached)
        started = _start_ticks(pid)
        if started is None:  # gone (or a zombie: its details are gone too)
            self.counters["vanished"] += 1
            return None
        if cached is not None and cached[1] == started:
            cached = (cached[0], started, time.time())
            self._procs[pid] = cached
            return self._still_current(pid, cached)
        info = self._read_process(pid)
        if info is None:
            return None
        self._procs.pop(pid, None)
        self._procs[pid] = (info, started, time.time())
        _trim(self._procs, self.max_entries)
        return info

    def _still_current(self, pid: int, cached: tuple[ProcessInfo, int, float]) -> ProcessInfo:
        """The cached details, marked deleted if the program has removed its binary since (cheap check)."""
        info = cached[0]
        if not info.exe_deleted and info.exe and exe_deleted(pid, info.exe):
            info = info._replace(exe_deleted=True)
            self._procs[pid] = (info, cached[1], cached[2])
        return info

    # --- socket table ---------------------------------------------------------------------------
    def _match(
        self, proto: int, lip: str, lport: int, rip: str, rport: int, now: float
    ) -> tuple[int, float] | None:
        """(pid, wall time of the scan) of the socket for this local end, or None."""
        entry = self._sockets.get((proto, lip, lport))
        if entry is not None and now - entry[0] <= self.cache_ttl:
            pid = _pick(entry[2], rip, rport)
            if pid is not None:
                return pid, entry[1]
        version = 6 if ":" in lip else 4
        for wildcard in _WILDCARDS[version]:
            entry = self._sockets.get((proto, wildcard, lport))
            if entry is not None and now - entry[0] <= self.cache_ttl:
                pid = _pick(entry[2], "", 0)
                if pid is not None:
                    return pid, entry[1]
        return None

    def _refresh(self, now: float) -> bool:
        """Scan now, or after a short wait if the budget allows; False when no scan was made."""
        due = self._last_scan + self.min_refresh_interval
        if now < due:
            wait = due - now
            self._wait_credit = min(
                self.min_refresh_interval, self._wait_credit + (now - self._credit_at) * self.max_wait_share
            )
            self._credit_at = now
            if wait > self._wait_credit:
                return False
            self._wait_credit -= wait
            self.counters["waits"] += 1
            time.sleep(wait)
        self._scan()
        return True

    def _scan(self) -> None:
        start = time.monotonic()
        self._last_scan = start
        wall = time.time()
        self.counters["scans"] += 1
        try:
            conns = psutil.net_connections(kind="inet")
        except (psutil.Error, OSError):
            self.counters["scan_errors"] += 1
            return
        fresh: dict[_Key, list[_Peer]] = {}
        for conn in conns:
            proto = _PROTO_OF_TYPE.get(conn.type)
            if conn.pid is None or proto is None or not conn.laddr:
                continue  # TIME_WAIT and other orphans have no owner
            key = (proto, _norm_ip(conn.laddr.ip), conn.laddr.port)
            peer = (_norm_ip(conn.raddr.ip), conn.raddr.port, conn.pid) if conn.raddr else ("", 0, conn.pid)
            fresh.setdefault(key, []).append(peer)
        sockets = self._sockets
        for key, peers in fresh.items():
            sockets.pop(key, None)  # re-insert: dict order stays oldest-seen first
            sockets[key] = (start, wall, tuple(peers))
        _expire(sockets, start - self.cache_ttl)
        _trim(sockets, self.max_entries)
        _expire_misses(self._missed, start - self.cache_ttl)
        self.last_scan_seconds = time.monotonic() - start

    def _remember_miss(self, query: _Query, when: float) -> None:
        self._missed.pop(query, None)
        self._missed[query] = when
        _trim(self._missed, self.max_entries)

    def _attributed(self, pid: int, seen_wall: float) -> ProcessInfo | None:
        info = self.process_info(pid, seen_wall)
        self.counters["attributed" if info is not None else "unattributed"] += 1
        return info

    # --- process details --------------------------------------------------------------------------
    def _read_process(self, pid: int) -> ProcessInfo | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                created = proc.create_time()
                name = proc.name()
                exe = _safe(proc.exe)
                cmdline = _cmdline_text(_safe(proc.cmdline, []))
                username = _safe(proc.username)
                ppid = proc.ppid()
        except psutil.NoSuchProcess:
            self.counters["vanished"] += 1
            return None
        except psutil.Error:
            self.counters["process_errors"] += 1
            return None
        parent_exe = ""
        if ppid > 0:
            try:
                parent_exe = psutil.Process(ppid).exe()
            except psutil.Error:
                parent_exe = ""
        argv = tuple(_safe(proc.cmdline, [])[:_CMDLINE_MAX_ARGS])
        cgroup = _cgroup_of(pid)
        return ProcessInfo(
            pid, exe, name, cmdline, username, parent_exe, exe_deleted(pid), created,
            ppid, cgroup, container_id(cgroup), argv,
        )  # fmt: skip


def _cgroup_of(pid: int) -> str:
    """The v2 cgroup path of a live process ("" when unknown)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return ""


def _owned_then(cached: tuple[ProcessInfo, int, float], seen_wall: float) -> bool:
    """Were these details read from the process that had this pid at ``seen_wall``?

    Yes when it had started by then and was still alive when read afterwards. psutil's
    create_time rests on a boot time in whole seconds, hence the one-second slack.
    """
    info, _ticks, read_at = cached
    return info.create_time - 1.0 <= seen_wall <= read_at


def _pick(peers: tuple[_Peer, ...], rip: str, rport: int) -> int | None:
    """Owner among the sockets sharing one local end: exact remote first, then an unconnected one."""
    unconnected = None
    for peer_ip, peer_port, pid in peers:
        if rip and peer_ip == rip and peer_port == rport:
            return pid
        if not peer_ip and unconnected is None:
            unconnected = pid
    if unconnected is not None:
        return unconnected
    if not rip and peers:
        return peers[0][2]  # no remote given: any socket on this local end
    return None


def _safe(getter, default=""):
    """A detail that may be denied (zombie, permissions) without losing the others."""
    try:
        return getter()
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return default


def _expire(sockets: dict, oldest: float) -> None:
    """Drop entries not seen since ``oldest``; they sit at the front of the dict."""
    while sockets:
        key = next(iter(sockets))
        if sockets[key][0] >= oldest:
            return
        del sockets[key]


def _expire_misses(missed: dict, oldest: float) -> None:
    while missed:
        key = next(iter(missed))
        if missed[key] >= oldest:
            return
        del missed[key]


def _trim(table: dict, limit: int) -> None:
    """Drop the oldest entries beyond ``limit``."""
    while len(table) > limit:
        del table[next(iter(table))]
