"""Binary identity: hashes of real files and of real running processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.detector.enrich.identity import BinaryIdentity, IdentityInfo


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sleeper(tmp_path):
    """A private copy of /bin/sleep, running; yields (process, path of the copy)."""
    exe = tmp_path / "sleeper"
    shutil.copy2("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "30"])
    yield proc, exe
    proc.kill()
    proc.wait(timeout=10)


def test_hash_matches_hashlib_and_is_cached(tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks, not a multiple of one
    ident = BinaryIdentity(chunk_size=1 << 20)
    assert ident.identity(str(exe)) == sha256_of(exe)
    assert ident.counters["hashed"] == 1
    assert ident.identity(str(exe)) == sha256_of(exe)
    assert ident.counters["hashed"] == 1  # not read again
    assert ident.counters["cache_hits"] == 1
    assert ident.counters["bytes_hashed"] == exe.stat().st_size


def test_a_modified_file_is_hashed_again(tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(b"\x7fELF version 1")
    ident = BinaryIdentity()
    first = ident.identity(str(exe))
    with exe.open("ab") as f:
        f.write(b" and 2")
    second = ident.identity(str(exe))
    assert second == sha256_of(exe) != first
    assert ident.counters["hashed"] == 2


def test_content_swapped_with_the_old_mtime_is_still_noticed(tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(b"AAAA")
    ident = BinaryIdentity()
    first = ident.identity(str(exe))
    st = exe.stat()
    exe.write_bytes(b"BBBB")  # same size
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back, as `touch -r` would
    assert ident.identity(str(exe)) == sha256_of(exe) != first


def test_unreadable_and_odd_files_are_none_and_counted(tmp_path):
    ident = BinaryIdentity()
    assert ident.identity(str(tmp_path / "missing")) is None
    assert ident.identity(str(tmp_path)) is None  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert ident.identity(str(fifo)) is None  # must not block waiting for a writer
    assert ident.identity("bad\x00path") is None
    assert ident.counters["unreadable"] == 4
    assert ident.counters["hashed"] == 0


def test_too_large_files_are_not_hashed(tmp_path):
    exe = tmp_path / "big"
    exe.write_bytes(b"x" * 2048)
    ident = BinaryIdentity(max_size=1024)
    assert ident.identity(str(exe)) is None
    assert ident.counters["too_large"] == 1


def test_cache_is_bounded(tmp_path):
    ident = BinaryIdentity(max_entries=3)
    files = []
    for i in range(5):
        f = tmp_path / f"t{i}"
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
        ident.identity(str(f))
    assert len(ident._hashes) == 3
    ident.identity(str(files[0]))  # evicted: read again
    assert ident.counters["hashed"] == 6


def test_running_process_with_its_binary_in_place(sleeper):
    proc, exe = sleeper
    ident = BinaryIdentity()
    assert ident.inspect(str(exe), proc.pid) == IdentityInfo(sha256_of(exe), False, False)
    ident.identity(str(exe))  # the file and the running image are one inode: one hash
    assert ident.counters["hashed"] == 1


def test_running_process_whose_binary_was_deleted(sleeper):
    proc, exe = sleeper
    expected = sha256_of(exe)
    os.unlink(exe)
    ident = BinaryIdentity()
    info = ident.inspect(str(exe), proc.pid)
    assert info == IdentityInfo(expected, True, False)  # hashed through /proc/PID/exe
    assert ident.identity(str(exe)) is None  # without a pid there is nothing left to read
    assert ident.counters["deleted"] == 1


def test_running_process_whose_binary_was_replaced(sleeper):
    proc, exe = sleeper
    expected = sha256_of(exe)
    new = exe.with_name("sleeper.new")
    new.write_bytes(b"#!/bin/sh\necho not sleep\n")
    os.rename(new, exe)  # how package managers install a new version over a running one
    ident = BinaryIdentity()
    info = ident.inspect(str(exe), proc.pid)
    assert info.sha256 == expected
    assert info.replaced is True and info.deleted is True
    assert ident.identity(str(exe)) == sha256_of(exe) != expected


def test_pid_running_another_program_is_not_trusted(sleeper, tmp_path):
    proc, _exe = sleeper
    other = tmp_path / "other"
    other.write_bytes(b"not the binary of that pid")
    ident = BinaryIdentity()
    # The pid runs `sleeper`, not `other`: hash the file, claim nothing about the process.
    assert ident.inspect(str(other), proc.pid) == IdentityInfo(sha256_of(other), False, False)


def test_exited_pid_falls_back_to_the_file(tmp_path):
    exe = tmp_path / "true"
    shutil.copy2("/bin/true", exe)
    dead_pid = 2**22 + 1  # above the largest pid_max: never a running process
    ident = BinaryIdentity()
    assert ident.inspect(str(exe), dead_pid) == IdentityInfo(sha256_of(exe), False, False)
