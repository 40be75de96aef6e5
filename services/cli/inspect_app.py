"""The `pktscope inspect` terminal UI (Textual): live connections, breakdowns, alerts, history.

It reads Redis once a second in a worker thread (services/cli/inspect_data.py), so neither the
screen nor the pipeline ever waits on the other. Every string shown came from the network or
the host: cells are plain rich Text (no markup) and control characters are escaped.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane

from services.cli.inspect_data import (
    InspectError,
    InspectSource,
    alert_fields,
    breakdown,
    conn_fields,
    make_filter,
)
from services.cli.text import safe
from services.detector.alerts import display_name

REFRESH_SECONDS = 1.0
MAX_ROWS = 2000  # rows drawn per table (the rest is counted in the status line)
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def _t(value: Any) -> Text:
    return Text(safe(str(value)) if value not in (None, "") else "")


def parse_history_query(text: str, now: float) -> tuple[str, float, float]:
    """``PROCESS [WINDOW]`` (``curl 1h``; default 1h) or ``PROCESS START END`` (ISO times, UTC)."""
    parts = text.split()
    if not parts:
        raise InspectError("type a program (name or path) and a window, e.g. `curl 1h`")
    entity = parts[0]
    if len(parts) == 1:
        return entity, now - 3600, now
    if len(parts) == 2:
        spec = parts[1]
        try:
            seconds = float(spec[:-1]) * WINDOW_UNITS[spec[-1]] if spec[-1] in WINDOW_UNITS else float(spec)
        except ValueError:
            raise InspectError(f"window {spec!r}: write it like 30m, 2h or 1d") from None
        return entity, now - seconds, now
    try:
        start = datetime.fromisoformat(parts[1]).replace(tzinfo=UTC).timestamp()
        end = datetime.fromisoformat(parts[2]).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise InspectError("times like 2026-12-02T10:00 2026-12-02T11:00 (UTC)") from None
    return entity, start, end


class InspectApp(App):
    """What a running pipeline sees, refreshed every second."""

    TITLE = "pktscope inspect"
    CSS = """
    #status { height: 1; padding: 0 1; background: $panel; }
    #message { height: 1; padding: 0 1; color: $warning; }
    #alert_detail { height: 8; border-top: solid $primary; padding: 0 1; }
    DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "ack", "Seen"),
        Binding("a", "allow", "Allow"),
        Binding("1", "tab('conns')", "Connections", show=False),
        Binding("2", "tab('procs')", "Processes", show=False),
        Binding("3", "tab('dests')", "Destinations", show=False),
        Binding("4", "tab('alerts')", "Alerts", show=False),
        Binding("5", "tab('history')", "History", show=False),
    ]

    def __init__(self, source: InspectSource, refresh_seconds: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.predicate = make_filter("")
        self.filter_text = ""
        self.conns: list[dict[str, Any]] = []
        self.alert_rows: list[dict[str, Any]] = []
        self.status_data: dict[str, Any] = {}
        self.history_query = ""
        self.refreshes = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting...", id="status")
        yield Input(placeholder='display filter, e.g. tcp.port == 443 && process.name == "curl"', id="filter")
        yield Static("", id="message")
        with TabbedContent(initial="conns", id="tabs"):
            with TabPane("Connections [1]", id="conns"):
                yield DataTable(id="conns_table", cursor_type="row", zebra_stripes=True)
            with TabPane("Processes [2]", id="procs"):
                yield DataTable(id="procs_table", cursor_type="row")
            with TabPane("Destinations [3]", id="dests"):
                yield DataTable(id="dests_table", cursor_type="row")
            with TabPane("Alerts [4]", id="alerts"):
                yield DataTable(id="alerts_table", cursor_type="row")
                yield Static("", id="alert_detail")
            with TabPane("History [5]", id="history"):
                yield Input(
                    placeholder="program and window: curl 1h  |  /usr/bin/curl 2026-12-02T10:00 2026-12-02T11:00",
                    id="history_query",
                )
                yield DataTable(id="history_table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#conns_table", DataTable).add_columns(
            "process",
            "pid",
            "user",
            "container",
            "destination",
            "label",
            "country",
            "AS",
            "up",
            "down",
            "age",
            "state",
        )
        self.query_one("#procs_table", DataTable).add_columns(
            "process", "connections", "destinations", "up", "down"
        )
        self.query_one("#dests_table", DataTable).add_columns(
            "destination", "connections", "processes", "up", "down"
        )
        self.query_one("#alerts_table", DataTable).add_columns(
            "seen", "time", "severity", "kind", "title", "id"
        )
        self.query_one("#history_table", DataTable).add_columns(
            "destination", "label", "flows", "up", "down", "ports", "first", "last"
        )
        self.query_one("#conns_table", DataTable).focus()
        self.refresh_data()
        self.set_interval(self.refresh_seconds, self.refresh_data)

    # --- data ------------------------------------------------------------------------------------
    def refresh_data(self) -> None:
        self.run_worker(self._fetch, thread=True, exclusive=True, group="fetch")

    def _fetch(self) -> None:
        try:
            status = self.source.status()
            conns = self.source.connections()
            alerts = self.source.alerts()
        except Exception as exc:  # Redis away: say so, keep the last view
            self.call_from_thread(self._say, f"cannot read Redis: {exc}")
            return
        self.call_from_thread(self._apply, status, conns, alerts)

    def _say(self, message: str) -> None:
        # the answer can come back while the app closes: then there is nothing left to tell
        with contextlib.suppress(NoMatches, ScreenStackError):
            self.query_one("#message", Static).update(Text(message))

    def _apply(self, status: dict, conns: list[dict], alerts: list[dict]) -> None:
        self.status_data, self.conns, self.alert_rows = status, conns, alerts
        self.refreshes += 1
        # the fetch can finish while the screen is torn down: the data is kept, nothing is drawn
        with contextlib.suppress(NoMatches, ScreenStackError):
            self._draw()

    def _draw(self) -> None:
        shown = [c for c in self.conns if self._keep(conn_fields(c))]
        alerts = [a for a in self.alert_rows if self._keep(alert_fields(a))]
        now = time.time()
        status = self.status_data
        services = status.get("services", {})
        up = sum(1 for s in services.values() if s["state"] == "up")
        learning = status.get("learning")
        state = "learning" if learning else "detecting" if learning is not None else "?"
        unseen = sum(1 for a in self.alert_rows if not a.get("seen"))
        self.query_one("#status", Static).update(
            Text(
                f"services up {up}/{len(services)} | baseline {state} | connections {len(shown)}/{len(self.conns)}"
                f" | alerts {len(self.alert_rows)} ({unseen} unseen) | updated {max(0.0, now - status.get('live_updated', now)):.0f} s ago"
            )
        )
        wm = status.get("watermark") or now
        self._fill(
            "#conns_table",
            [
                (
                    c.get("key"),
                    [
                        _t((c.get("process") or {}).get("name") or display_name(str(c.get("entity", "")))),
                        _t((c.get("process") or {}).get("pid", "")),
                        _t((c.get("process") or {}).get("user", "")),
                        _t((c.get("process") or {}).get("container", "")),
                        _t(f"{c.get('name') or c.get('dst')}:{c.get('dport')}"),
                        _t(c.get("label")),
                        _t(c.get("country")),
                        _t(f"AS{c['asn']} {c.get('as_org', '')}" if c.get("asn") else ""),
                        _t(human_bytes(int(c.get("bytes_out") or 0))),
                        _t(human_bytes(int(c.get("bytes_in") or 0))),
                        _t(f"{max(0.0, wm - float(c.get('first') or wm)):.0f} s"),
                        _t(c.get("state") or c.get("dir")),
                    ],
                )
                for c in shown
            ],
        )
        self._fill(
            "#procs_table",
            [
                (
                    r["key"],
                    [
                        _t(r["key"]),
                        _t(r["flows"]),
                        _t(r["peers"]),
                        _t(human_bytes(r["bytes_out"])),
                        _t(human_bytes(r["bytes_in"])),
                    ],
                )
                for r in breakdown(shown, "process")
            ],
        )
        self._fill(
            "#dests_table",
            [
                (
                    r["key"],
                    [
                        _t(r["key"]),
                        _t(r["flows"]),
                        _t(r["peers"]),
                        _t(human_bytes(r["bytes_out"])),
                        _t(human_bytes(r["bytes_in"])),
                    ],
                )
                for r in breakdown(shown, "destination")
            ],
        )
        self._fill(
            "#alerts_table",
            [
                (
                    a["id"],
                    [
                        _t("yes" if a.get("seen") else "NEW"),
                        _t(when(float(a.get("ts") or 0))),
                        _t(a.get("severity")),
                        _t(a.get("kind")),
                        _t(a.get("title")),
                        _t(a["id"]),
                    ],
                )
                for a in alerts
            ],
        )
        self._show_alert_detail()

    def _keep(self, fields: dict) -> bool:
        try:
            return bool(self.predicate(fields))
        except Exception:
            return False

    def _fill(self, selector: str, rows: list[tuple[str, list[Text]]]) -> None:
        """Replace a table's rows, keeping the cursor on the same row key when it is still there."""
        table = self.query_one(selector, DataTable)
        current = None
        if table.row_count and 0 <= table.cursor_row < table.row_count:
            try:
                current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            except Exception:
                current = None
        table.clear()
        seen: set[str] = set()
        for key, cells in rows[:MAX_ROWS]:
            key = str(key)
            if key in seen:
                continue
            seen.add(key)
            table.add_row(*cells, key=key)
        if current is not None and current in seen:
            table.move_cursor(row=table.get_row_index(current))

    # --- alerts -------------------------------------------------------------------------------------
    def selected_alert(self) -> dict | None:
        try:
            table = self.query_one("#alerts_table", DataTable)
        except NoMatches:  # a refresh while the app starts or closes: no tables on screen
            return None
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return None
        return next((a for a in self.alert_rows if a["id"] == key), None)

    def _show_alert_detail(self) -> None:
        alert = self.selected_alert()
        try:
            detail = self.query_one("#alert_detail", Static)
        except NoMatches:
            return
        if alert is None:
            detail.update("")
            return
        facts = alert.get("detail") or {}
        flow = facts.get("flow") or {}
        lines = [
            f"{alert.get('title', '')}",
            f"entity {alert.get('entity', '')}  destination {alert.get('destination', '')}  id {alert['id']}",
            f"flow {flow.get('src', '')}:{flow.get('sport', '')} -> {flow.get('dst', '')}:{flow.get('dport', '')} proto {flow.get('proto', '')}",
            "  ".join(
                f"{k}={facts[k]}"
                for k in ("label", "name", "country", "asn", "as_org", "pid", "exe", "username", "cmdline")
                if facts.get(k) not in (None, "")
            ),
        ]
        detail.update(Text("\n".join(safe(line) for line in lines)))

    @on(DataTable.RowHighlighted, "#alerts_table")
    def _alert_highlighted(self) -> None:
        self._show_alert_detail()

    def action_ack(self) -> None:
        alert = self.selected_alert()
        if alert is None:
            self._say("select an alert in the Alerts tab first")
            return
        self.source.ack([alert["id"]])
        alert["seen"] = True
        self._say(f"alert {alert['id']} marked seen")
        self._draw()

    def action_allow(self) -> None:
        alert = self.selected_alert()
        if alert is None:
            self._say("select an alert in the Alerts tab first")
            return
        try:
            message = self.source.allow(alert)
        except (InspectError, ValueError) as exc:
            self._say(str(exc))
            return
        alert["seen"] = True
        self._say(message)
        self._draw()

    # --- filter, tabs, history ---------------------------------------------------------------------------
    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        table = {"history": "#history_query"}.get(tab, f"#{tab}_table")
        self.query_one(table).focus()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        try:
            self.predicate = make_filter(event.value)
        except InspectError as exc:
            self._say(f"filter: {exc}")
            return
        self.filter_text = event.value
        self._say(f"filter: {event.value}" if event.value else "")
        self._draw()

    @on(Input.Submitted, "#history_query")
    def _history_submitted(self, event: Input.Submitted) -> None:
        now = self.status_data.get("watermark") or time.time()
        try:
            entity, start, end = parse_history_query(event.value, now)
            rows = self.source.history(entity, start, end)
        except InspectError as exc:
            self._say(str(exc))
            return
        self._say(f"history of {entity}: {len(rows)} destinations between {when(start)} and {when(end)} UTC")
        self._fill(
            "#history_table",
            [
                (
                    r["destination"],
                    [
                        _t(r["destination"]),
                        _t(r["label"]),
                        _t(r["flows"]),
                        _t(human_bytes(r["bytes_out"])),
                        _t(human_bytes(r["bytes_in"])),
                        _t(",".join(map(str, r["ports"][:8]))),
                        _t(when(r["first"])),
                        _t(when(r["last"])),
                    ],
                )
                for r in rows
            ],
        )
