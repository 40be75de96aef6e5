"""A progress bar for `pktscope run --read` when stderr is a terminal (rich).

It shows how far capture has read the file (bytes, from the capture process's file offset in
/proc/PID/fdinfo: libpcap gives no position of its own), packets per second and alerts so far,
from the stats hashes the services publish anyway. The bar is removed when the replay ends, so
the summary printed after it stays on the screen as before.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis

from shared.config import PipelineConfig
from shared.redis_keys import Keys

UPDATE_EVERY = 0.2  # seconds between two Redis reads for the bar


def file_offset(pid: int, path: str) -> int | None:
    """How far process ``pid`` has read ``path`` (its descriptor's offset), or None if unknown."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                    continue
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                    if line.startswith("pos:"):
                        return int(line.split()[1])
            except (OSError, ValueError):
                continue
    except OSError:
        return None
    return None


class ReplayProgress:
    """Call ``update()`` from the waiting loop and ``close()`` before printing the summary."""

    def __init__(self, cfg: PipelineConfig, r: redis.Redis, keys: Keys) -> None:
        # rich only when a bar is shown (0.03-0.04 CPU s of a replay whose stderr is not a terminal)
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self.cfg, self.r, self.keys = cfg, r, keys
        self.size = os.path.getsize(cfg.read_path)
        self.progress = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[pps]:>10,} packets/s"),
            TextColumn("{task.fields[packets]:>12,} packets"),
            TextColumn("alerts {task.fields[alerts]:,}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self.task = self.progress.add_task("replay", total=self.size, pps=0, packets=0, alerts=0)
        self.progress.start()
        self._next = 0.0
        self._last = (time.monotonic(), 0)
        self.done = 0

    @classmethod
    def maybe(cls, cfg: PipelineConfig, r: redis.Redis, keys: Keys) -> ReplayProgress | None:
        """A bar for a replay whose stderr is a terminal; None otherwise (pipes, logs, --json)."""
        if cfg.live or not cfg.read_path or not sys.stderr.isatty():
            return None
        return cls(cfg, r, keys)

    def update(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + UPDATE_EVERY
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.hmget(self.keys.stats("capture"), "packets", "pid", "run_id", "eos")
            pipe.hmget(self.keys.stats("detector"), "alerts", "run_id")
            (packets, pid, cap_run, eos), (alerts, det_run) = pipe.execute()
        except redis.RedisError:
            return
        packets = int(packets or 0) if cap_run == self.cfg.run_id else 0
        alerts = int(alerts or 0) if det_run == self.cfg.run_id else 0
        offset = self.size if eos else file_offset(int(pid or 0), self.cfg.read_path) if pid else None
        if offset is not None:
            self.done = max(self.done, min(offset, self.size))
        then, before = self._last
        pps = int((packets - before) / (now - then)) if now > then and packets >= before else 0
        self._last = (now, packets)
        self.progress.update(self.task, completed=self.done, pps=max(pps, 0), packets=packets, alerts=alerts)

    def close(self) -> None:
        self.progress.stop()
