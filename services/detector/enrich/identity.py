"""What binary a process really runs: the SHA-256 of its executable, hashed once per file version.

A path says little (``/usr/bin/python3`` can be anything); the hash identifies the program, and
a running process whose executable was deleted or replaced on disk is itself worth reporting.
With a pid, the running image is hashed through ``/proc/PID/exe``, which keeps pointing at the
executed inode even when the file at the path is gone or is now another file.

Hashes are cached by (device, inode, size, mtime, ctime): a new version of a file gets a new
entry and is hashed once. ctime is included because mtime can be set back with ``touch -r``
while ctime cannot be forged from user space.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections import Counter
from typing import NamedTuple

_DELETED = " (deleted)"
_Key = tuple[int, int, int, int, int]


class IdentityInfo(NamedTuple):
    sha256: str | None  # hex digest of the running image (or of the file), None when unreadable
    deleted: bool  # the running executable no longer has a name on disk
    replaced: bool  # a different file now sits at the executable's path


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class BinaryIdentity:
    """``identity(exe, pid=None) -> sha256 hex | None``; ``inspect(exe, pid)`` adds deleted/replaced.

    ``counters``: hashed (files read), bytes_hashed, cache_hits, unreadable, too_large, changed
    (the file changed while it was read; hashed again once), deleted, replaced.
    """

    def __init__(self, max_entries: int = 4096, max_size: int = 1 << 30, chunk_size: int = 1 << 20) -> None:
        self.max_entries = max_entries
        self.max_size = max_size  # bigger files are not hashed: hashing must not stall the detector
        self.chunk_size = chunk_size
        self.counters: Counter[str] = Counter()
        self._hashes: dict[_Key, str] = {}

    def identity(self, exe: str, pid: int | None = None) -> str | None:
        """SHA-256 hex of what ``pid`` runs (or of the file ``exe``), None when it cannot be read."""
        return self.inspect(exe, pid).sha256

    def inspect(self, exe: str, pid: int | None = None) -> IdentityInfo:
        """Hash plus whether the running image was deleted or replaced on disk.

        With ``pid``, ``/proc/PID/exe`` must still name ``exe`` (with or without the kernel's
        " (deleted)" marker); otherwise the pid was reused or exec'd something else, and the
        file at ``exe`` is hashed instead, with no claim about deletion.
        """
        if pid is not None:
            running = self._running_image(exe, pid)
            if running is not None:
                return running
        return IdentityInfo(self._hash_path(exe), False, False)

    # --- internals --------------------------------------------------------------------------
    def _running_image(self, exe: str, pid: int) -> IdentityInfo | None:
        proc_exe = f"/proc/{pid}/exe"
        try:
            link = os.readlink(proc_exe)
            image = os.stat(proc_exe)
        except OSError:
            return None  # gone, a kernel thread, or not ours to see
        marked = link.endswith(_DELETED)
        if (link[: -len(_DELETED)] if marked else link) != exe:
            return None
        deleted = marked and image.st_nlink == 0
        try:
            on_disk = os.stat(exe)
            replaced = (on_disk.st_dev, on_disk.st_ino) != (image.st_dev, image.st_ino)
        except OSError:
            replaced = False
        self.counters["deleted"] += deleted
        self.counters["replaced"] += replaced
        return IdentityInfo(self._hash_path(proc_exe, image), deleted, replaced)

    def _hash_path(self, path: str, st: os.stat_result | None = None) -> str | None:
        try:
            st = st or os.stat(path)
        except (OSError, ValueError):
            self.counters["unreadable"] += 1
            return None
        cached = self._hashes.get(_key(st))
        if cached is not None:
            self.counters["cache_hits"] += 1
            return cached
        return self._hash_file(path)

    def _hash_file(self, path: str) -> str | None:
        """Read and hash; the key comes from the open file, so a swap between stat and open is harmless."""
        for _attempt in range(2):
            try:
                # O_NONBLOCK: a FIFO swapped in at the path must not block us; regular files ignore it.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except (OSError, ValueError):
                self.counters["unreadable"] += 1
                return None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    self.counters["unreadable"] += 1
                    return None
                if before.st_size > self.max_size:
                    self.counters["too_large"] += 1
                    return None
                with open(fd, "rb", buffering=0, closefd=False) as f:
                    digest = self._digest(f, before.st_size)
                after = os.fstat(fd)
            except OSError:
                self.counters["unreadable"] += 1
                return None
            finally:
                os.close(fd)
            if _key(before) == _key(after):
                self._remember(_key(before), digest)
                return digest
            self.counters["changed"] += 1
        return None

    def _digest(self, f: io.RawIOBase, size: int) -> str:
        """Hash at most ``size`` bytes (a file that grows meanwhile is caught by the key check)."""
        sha = hashlib.sha256()
        buf = bytearray(self.chunk_size)
        view = memoryview(buf)
        total = 0
        while total < size:
            n = f.readinto(view[: min(self.chunk_size, size - total)])
            if not n:
                break
            sha.update(view[:n])
            total += n
        self.counters["hashed"] += 1
        self.counters["bytes_hashed"] += total
        return sha.hexdigest()

    def _remember(self, key: _Key, digest: str) -> None:
        hashes = self._hashes
        hashes[key] = digest
        while len(hashes) > self.max_entries:
            del hashes[next(iter(hashes))]
