"""Facts about processes, kept from their exec/fork to well after their exit (bounded).

A flow is often seen after the program that opened it has exited (curl lives milliseconds),
so what the detector reports -- exe, argv, parent, user, cgroup, the SHA-256 of the binary that
ran -- is collected here at exec time, while the process lives, and kept by tgid until
``max_entries`` newer processes push it out. A reused pid gets a fresh record at its exec or fork.
"""

from __future__ import annotations

import os
import pwd
import shlex
import time
from collections import Counter, OrderedDict
from typing import Any

from services.detector.enrich.identity import BinaryIdentity
from services.procwatch import cgroups
from services.procwatch.events import ProcEvent, SockEvent

MAX_PROCESSES = 32768
CMDLINE_MAX_CHARS = 1024
_DELETED = " (deleted)"


def _cmdline(argv: list[str]) -> str:
    text = shlex.join(a[:CMDLINE_MAX_CHARS] for a in argv[:128])
    return text if len(text) <= CMDLINE_MAX_CHARS else text[: CMDLINE_MAX_CHARS - 3] + "..."


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _proc_argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0") if a][:64]


def _same_file(st: os.stat_result, ev: ProcEvent) -> bool:
    """Is the file at a path the inode the kernel executed (dev, inode, size, mtime)?"""
    dev_ok = os.major(st.st_dev) == ev.dev >> 20 and os.minor(st.st_dev) == ev.dev & 0xFFFFF
    mtime_ok = ev.mtime_ns == 0 or st.st_mtime_ns == ev.mtime_ns
    return dev_ok and st.st_ino == ev.ino and st.st_size == ev.size and mtime_ok


class ProcessTable:
    """tgid -> facts dict (the shape published in socket facts; see docs/architecture.md)."""

    def __init__(self, max_entries: int = MAX_PROCESSES, identity: BinaryIdentity | None = None) -> None:
        self.max_entries = max_entries
        self.identity = identity or BinaryIdentity()
        self.cgroups = cgroups.CgroupPaths()
        self.counters: Counter[str] = Counter()
        self._procs: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._users: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._procs)

    def get(self, tgid: int) -> dict[str, Any] | None:
        return self._procs.get(tgid)

    # --- lifecycle events --------------------------------------------------------------------
    def on_exec(self, ev: ProcEvent, wall: float) -> dict[str, Any]:
        exe, sha, deleted = self._exe_identity(ev)
        argv = list(ev.argv) or _proc_argv(ev.tgid) or [ev.comm]
        rec = self._base(ev.tgid, ev.ppid, ev.uid, ev.comm, ev.cgroup_id, wall)
        rec.update(exe=exe, argv=argv, cmdline=_cmdline(argv), sha256=sha, exe_deleted=deleted, source="exec")
        self._put(ev.tgid, rec)
        self.counters["execs"] += 1
        return rec

    def on_fork(self, ev: ProcEvent, wall: float) -> None:
        child = ev.other_pid
        if os.path.exists(f"/proc/{ev.tgid}/task/{child}"):
            return  # a new thread of the parent, not a process
        parent = self._procs.get(ev.tgid)
        if parent is None:  # started before procwatch: read once, then kept
            parent = self._from_proc(ev.tgid, ev.ppid, ev.uid, ev.comm, ev.cgroup_id, wall)
            self._put(ev.tgid, parent)
        rec = dict(parent)
        rec.update(pid=child, ppid=ev.tgid, parent_exe=parent.get("exe", ""), started=wall, exited=0.0)
        rec["source"] = "fork"
        self._put(child, rec)
        self.counters["forks"] += 1

    def on_exit(self, ev: ProcEvent, wall: float) -> None:
        rec = self._procs.get(ev.tgid)
        if rec is not None:
            rec["exited"] = wall
        self.counters["exits"] += 1

    def owner(self, ev: SockEvent, wall: float) -> dict[str, Any]:
        """The facts of the process behind a socket event (from its exec, else from /proc now)."""
        rec = self._procs.get(ev.tgid)
        if rec is None:
            rec = self._from_proc(ev.tgid, ev.ppid, ev.uid, ev.comm, ev.cgroup_id, wall)
            self._put(ev.tgid, rec)
        if not rec.get("exe_deleted") and rec.get("exe"):
            # a program that deletes its own binary after starting is worth reporting
            link = _readlink(f"/proc/{ev.tgid}/exe")
            if link is not None and link.endswith(_DELETED) and link[: -len(_DELETED)] == rec["exe"]:
                rec["exe_deleted"] = True
        if ev.cgroup_id and ev.cgroup_id != rec.get("cgroup_id"):
            rec["cgroup_id"] = ev.cgroup_id  # moved to another cgroup since its exec
            rec["cgroup"] = self._cgroup(ev.tgid, ev.cgroup_id)
            rec["container_id"] = cgroups.container_id(rec["cgroup"])
        return rec

    # --- building records -------------------------------------------------------------------
    def _base(self, tgid: int, ppid: int, uid: int, comm: str, cgroup_id: int, wall: float) -> dict[str, Any]:
        parent = self._procs.get(ppid)
        parent_exe = (
            parent["exe"] if parent else (_readlink(f"/proc/{ppid}/exe") or "").removesuffix(_DELETED)
        )
        cgroup = self._cgroup(tgid, cgroup_id)
        return {
            "pid": tgid,
            "ppid": ppid,
            "uid": uid,
            "user": self._user(uid),
            "comm": comm,
            "parent_exe": parent_exe,
            "cgroup_id": cgroup_id,
            "cgroup": cgroup,
            "container_id": cgroups.container_id(cgroup),
            "started": wall,
            "exited": 0.0,
        }

    def _from_proc(
        self, tgid: int, ppid: int, uid: int, comm: str, cgroup_id: int, wall: float
    ) -> dict[str, Any]:
        """A process that was running before procwatch (or whose exec event was lost)."""
        rec = self._base(tgid, ppid, uid, comm, cgroup_id, wall)
        link = _readlink(f"/proc/{tgid}/exe")
        exe, sha, deleted = "", None, False
        if link is not None:
            exe = link.removesuffix(_DELETED)
            info = self.identity.inspect(exe, tgid)
            sha, deleted = info.sha256, info.deleted
        argv = _proc_argv(tgid) or [comm]
        rec.update(exe=exe, argv=argv, cmdline=_cmdline(argv), sha256=sha, exe_deleted=deleted, source="proc")
        self.counters["from_proc" if exe else "unknown_exe"] += 1
        return rec

    def _exe_identity(self, ev: ProcEvent) -> tuple[str, str | None, bool]:
        """Path and SHA-256 of what was executed: through /proc/PID/exe while the process lives,
        else from the path the kernel reported when that file is still the executed inode."""
        link = _readlink(f"/proc/{ev.tgid}/exe")
        if link is not None:
            exe = link.removesuffix(_DELETED)
            info = self.identity.inspect(exe, ev.tgid)
            if info.sha256:
                self.counters["hashed_live"] += 1
                return exe, info.sha256, info.deleted
        self.counters["exited_before_hash"] += 1
        path = ev.filename
        for candidate in (path, self._interpreter(path)):
            if not candidate:
                continue
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if _same_file(st, ev):
                self.counters["hashed_verified_path"] += 1
                return os.path.abspath(candidate), self.identity.identity(candidate), False
        self.counters["identity_unverified"] += 1
        return (link or path).removesuffix(_DELETED), None, link is None

    @staticmethod
    def _interpreter(path: str) -> str:
        """A script's interpreter (what /proc/PID/exe would have named)."""
        try:
            with open(path, "rb") as f:
                head = f.read(256)
        except OSError:
            return ""
        if not head.startswith(b"#!"):
            return ""
        parts = head[2:].split(b"\n", 1)[0].split()
        return parts[0].decode("utf-8", "surrogateescape") if parts else ""

    def _cgroup(self, pid: int, cgroup_id: int) -> str:
        path = cgroups.path_of_pid(pid)
        if path:
            self.cgroups.learn(cgroup_id, path)
            return path
        return self.cgroups.path(cgroup_id) if cgroup_id else ""

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            if len(self._users) < 4096:
                self._users[uid] = name
        return name

    def _put(self, tgid: int, rec: dict[str, Any]) -> None:
        procs = self._procs
        procs.pop(tgid, None)
        procs[tgid] = rec
        while len(procs) > self.max_entries:
            procs.popitem(last=False)
            self.counters["evicted"] += 1


def wall_offset() -> float:
    """Add to CLOCK_MONOTONIC seconds (bpf_ktime_get_ns) to get wall-clock seconds."""
    return time.time() - time.monotonic()
