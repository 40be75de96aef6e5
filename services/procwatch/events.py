"""The kernel side's records, as bytes from the ring buffer (mirror of bpf/procwatch.bpf.c)."""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

EV_SOCK, EV_EXEC, EV_FORK, EV_EXIT, EV_LISTEN = 1, 2, 3, 4, 5
AF_INET, AF_INET6 = 2, 10

# ktime, kind, family, proto, pid, tgid, ppid, uid, cgroup id, comm, lport, rport, state, laddr, raddr
_SOCK = struct.Struct("<QIHHIIIIQ16sHHI16s16s")
# ktime, kind, other pid, pid, tgid, ppid, uid, cgroup id, comm, ino, size, mtime s, dev,
# mtime ns, args len, pad, filename, args
_PROC = struct.Struct("<QIIIIIIQ16sQQqIIII256s512s")
_KIND = struct.Struct("<QI")
ARGV_MAX = 64


class SockEvent(NamedTuple):
    ktime: int
    kind: int
    proto: int
    pid: int
    tgid: int
    ppid: int
    uid: int
    cgroup_id: int
    comm: str
    laddr: str
    lport: int
    raddr: str  # "" when the socket had no peer (unconnected, listening)
    rport: int
    state: int  # TCP: the new state; others: the socket type (2 dgram, 3 raw)


class ProcEvent(NamedTuple):
    ktime: int
    kind: int
    other_pid: int  # fork: the child; exec: the pid before exec
    pid: int
    tgid: int
    ppid: int
    uid: int
    cgroup_id: int
    comm: str
    ino: int
    size: int
    mtime_ns: int
    dev: int  # the kernel's dev_t (major << 20 | minor)
    filename: str
    argv: tuple[str, ...]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _addr(family: int, raw: bytes) -> str:
    if family == AF_INET:
        addr = ipaddress.IPv4Address(raw[:4])
    elif family == AF_INET6:
        addr = ipaddress.IPv6Address(raw)
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    else:
        return ""
    return "" if addr.is_unspecified else str(addr)


def parse(buf: bytes) -> SockEvent | ProcEvent | None:
    """One ring-buffer record; None for a record of unknown kind or size."""
    if len(buf) < _KIND.size:
        return None
    kind = _KIND.unpack_from(buf)[1]
    if kind in (EV_SOCK, EV_LISTEN) and len(buf) >= _SOCK.size:
        kt, kind, fam, proto, pid, tgid, ppid, uid, cg, comm, lport, rport, state, la, ra = _SOCK.unpack_from(
            buf
        )
        raddr = _addr(fam, ra)
        return SockEvent(
            kt, kind, proto, pid, tgid, ppid, uid, cg, _text(comm), _addr(fam, la), lport,
            raddr, rport if raddr else 0, state,
        )  # fmt: skip
    if kind in (EV_EXEC, EV_FORK, EV_EXIT) and len(buf) >= _PROC.size:
        (
            kt,
            kind,
            other,
            pid,
            tgid,
            ppid,
            uid,
            cg,
            comm,
            ino,
            size,
            msec,
            dev,
            mnsec,
            alen,
            _pad,
            fn,
            args,
        ) = _PROC.unpack_from(buf)
        argv = tuple(
            a.decode("utf-8", "surrogateescape") for a in args[: min(alen, len(args))].split(b"\0") if a
        )[:ARGV_MAX]
        return ProcEvent(
            kt, kind, other, pid, tgid, ppid, uid, cg, _text(comm), ino, size, msec * 1_000_000_000 + mnsec,
            dev, _text(fn), argv,
        )  # fmt: skip
    return None
