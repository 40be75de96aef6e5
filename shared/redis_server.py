"""Starting a private redis-server on a unix socket: for tests, offline CLI commands and the bench."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from shared.processes import wait_or_kill

# redis-py is imported where a server is talked to, not here: `pktscope run` imports this module
# before supervisord starts, and redis-py's import (~0.1 s) belongs after that (services/cli/run.py)


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


# The private Redis's persistence (compose/redis-program.conf.tmpl says the same): an append-only
# file fsynced every second, so a kill loses about a second at most. It is rewritten (compacted,
# in a forked child) once its log of commands passes AOF_REWRITE_MIN_SIZE and twice the data:
# at redis-server's default of 64 MB, repeated replays into one state directory made a start-up
# replay 33 MB of logged commands for 3 MB of data, 0.34 CPU s and as much wall time before the
# first packet (2026-12-03, /var/lib/pktscope after a day of replays).
AOF_REWRITE_MIN_SIZE = "8mb"
AOF_ARGS = (
    "--appendonly", "yes", "--appendfsync", "everysec",
    "--appenddirname", "pktscope-aof", "--appendfilename", "pktscope.aof",
    "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
)  # fmt: skip


def has_aof(data_dir: Path) -> bool:
    return (data_dir / "pktscope-aof" / "pktscope.aof.manifest").exists()


def needs_migration(data_dir: Path, dbfilename: str = "pktscope.rdb") -> bool:
    """An RDB file and no AOF: a state directory from before AOF (see ``migrate_to_aof``)."""
    return not has_aof(data_dir) and (data_dir / dbfilename).exists()


def migrate_to_aof(data_dir: Path, dbfilename: str = "pktscope.rdb") -> bool:
    """A state directory from before AOF (an RDB file only) gets its AOF made from that data.

    Started with ``--appendonly yes`` and no AOF yet, redis-server would begin *empty* and
    ignore the RDB file; switching AOF on in a running server (CONFIG SET) writes the AOF from
    what it loaded instead. True when a migration ran.
    """
    if not needs_migration(data_dir, dbfilename):
        return False
    import redis

    sock = data_dir / "migrate.sock"
    proc, url = start_redis_server(sock, data_dir, dbfilename, aof=False)
    try:
        r = redis.Redis.from_url(url)
        r.config_set("appendonly", "yes")
        deadline = time.time() + 120
        while time.time() < deadline:
            info = r.info("persistence")
            if info.get("aof_enabled") and not info.get("aof_rewrite_in_progress") and not info.get(
                "aof_rewrite_scheduled"
            ):
                break
            time.sleep(0.05)
        r.shutdown(save=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection: that is success
    finally:
        wait_or_kill(proc, 30)
    return True


def start_redis_server(
    sock: Path, data_dir: Path, dbfilename: str = "dump.rdb", timeout: float = 10.0, aof: bool = False
) -> tuple[subprocess.Popen, str]:
    """Start redis-server on ``sock`` (no TCP port, no periodic saves); return (process, url) once it answers.

    ``aof``: read and write the private Redis's append-only file in ``data_dir`` (AOF_ARGS).
    """
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
            *(AOF_ARGS if aof else ("--appenddirname", "pktscope-aof", "--appendfilename", "pktscope.aof", "--appendonly", "no")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

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
