"""Fixtures with real parts: a real redis-server on a unix socket, real ZeroMQ contexts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from shared.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
PCAPS = CORPUS / "pcaps"
BENCH_PCAP = CORPUS / "bench" / "sv-merged.pcap"
BENCH_PACKETS = 183_388  # packets in sv-merged.pcap
LONG_COPIES = 10  # copies of it in the long_capture fixture
LONG_PACKETS = LONG_COPIES * BENCH_PACKETS


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server on a unix socket in ``directory``; return (process, url)."""
    return start_redis_server(directory / "redis.sock", directory)


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


@pytest.fixture(scope="session")
def long_capture(tmp_path_factory) -> Path:
    """sv-merged.pcap LONG_COPIES times over: a replay long enough to interrupt, kill or fault.

    Ten copies (1,833,880 packets, ~6 s): the tests act on progress that services report once a
    second, and five copies, once replays took 3 s, sometimes ended before the second report."""
    from tests.fault_helpers import amplified

    return amplified(tmp_path_factory.mktemp("amplified") / f"sv-x{LONG_COPIES}.pcap", LONG_COPIES)
