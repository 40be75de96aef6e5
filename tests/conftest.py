"""Fixtures with real parts: a real redis-server on a unix socket, real ZeroMQ contexts."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
PCAPS = CORPUS / "pcaps"
BENCH_PCAP = CORPUS / "bench" / "sv-merged.pcap"


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server on a unix socket in ``directory``; return (process, url)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run scripts/setup (it apt-installs redis-server)")
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def redis_url(tmp_path_factory):
    """A fresh, empty redis-server for one test."""
    directory = tmp_path_factory.mktemp("redis")
    proc, url = start_redis(directory)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def rdb(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def short_tmp():
    """A short directory path: ipc:// socket paths must stay under ~100 bytes."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pks-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
