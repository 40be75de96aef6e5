"""The flow log: one JSON line per ended flow (its "end" event), like Zeek's conn.log.

Lines are appended per batch with one write(2) on an O_APPEND descriptor, so a reader (or a
test) sees whole lines only, an interrupted run keeps what it logged, and flow-tracker shards
appending to one file never split each other's lines (a buffered text file did: its writes
are cut at the buffer size). Names and app facts come from the network: JSON
escapes their control characters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shared.flowevents import EV_END, from_row


class FlowLog:
    """``process_of``: live runs pass the flow's local process facts (a map, or None when no
    process is known) for a ``process`` field on every line; replays have no such field."""

    def __init__(
        self, path: str | Path, process_of: Callable[[dict], dict[str, Any] | None] | None = None
    ) -> None:
        self.path = Path(path)
        self.process_of = process_of
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines = 0

    def write(self, events: Iterable[list | tuple]) -> int:
        """Append the end events among ``events`` (wire rows); return how many lines were written."""
        if self._fd is None:
            return 0
        dumps = json.dumps
        ended = [from_row(row) for row in events if row[0] == EV_END]
        if self.process_of is not None:
            for event in ended:
                event["process"] = self.process_of(event)
        lines = [dumps(event, separators=(",", ":")) for event in ended]
        if lines:
            data = ("\n".join(lines) + "\n").encode("utf-8")
            while data:
                data = data[os.write(self._fd, data) :]
            self.lines += len(lines)
        return len(lines)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_flow_log(path: str | Path) -> list[dict]:
    """Every event of a flow log (for tests and tools)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
