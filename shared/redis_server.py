"""Starting a private redis-server on a unix socket: for tests, offline CLI commands and the bench."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def start_redis_server(
    sock: Path, data_dir: Path, dbfilename: str = "dump.rdb", timeout: float = 10.0
) -> tuple[subprocess.Popen, str]:
    """Start redis-server on ``sock`` (no TCP port, no periodic saves); return (process, url) once it answers."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisServerError(
            "redis-server is not installed: run scripts/setup (it apt-installs redis-server)"
        )
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--dbfilename",
            dbfilename,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise RedisServerError(f"redis-server did not start on {sock}")
