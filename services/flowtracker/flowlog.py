"""The flow log: one JSON line per ended flow (its "end" event), like Zeek's conn.log.

Lines are appended and flushed per batch, so a reader (or a test) sees whole lines only and
an interrupted run keeps what it logged. Names and app facts come from the network: JSON
escapes their control characters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

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
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived
        self.lines = 0

    def write(self, events: Iterable[list | tuple]) -> int:
        """Append the end events among ``events`` (wire rows); return how many lines were written."""
        f = self._file
        if f is None:
            return 0
        dumps = json.dumps
        ended = [from_row(row) for row in events if row[0] == EV_END]
        if self.process_of is not None:
            for event in ended:
                event["process"] = self.process_of(event)
        lines = [dumps(event, separators=(",", ":")) for event in ended]
        if lines:
            f.write("\n".join(lines) + "\n")
            f.flush()
            self.lines += len(lines)
        return len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_flow_log(path: str | Path) -> list[dict]:
    """Every event of a flow log (for tests and tools)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
