"""`pktscope inspect` on a live pipeline on lo: Textual's pilot drives the UI (rows for live
connections, the alert feed, "allow" changing the baseline, "seen"), `inspect --json` prints a
snapshot, and a real terminal (tmux) shows what a person sees."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from services.cli.inspect_app import InspectApp, parse_history_query
from services.cli.inspect_data import InspectSource, conn_fields, make_filter
from services.detector.baseline_store import BaselineStore
from services.detector.keys import DetectorKeys
from tests.pipeline_helpers import ROOT, LivePipeline, Server, pktscope, wait_for

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]

BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


def hold_connection(port: int, seconds: float) -> subprocess.Popen:
    """A bash that opens a TCP connection to 127.0.0.1:port, sends a line and holds it open."""
    return subprocess.Popen(
        [BASH, "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo hello >&3; read -t {seconds} -u 3; true"]
    )


class ClosingServer:
    """A TCP server on lo that reads one chunk and closes 3 s later: the flow ends (FIN both ways)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                time.sleep(3.0)  # the client is still there when the detector looks for its process


@pytest.fixture
def live(short_tmp):
    server, closer = Server(), ClosingServer()
    pipe = LivePipeline(short_tmp, f"tcp port {server.port} or tcp port {closer.port}")
    pipe.closer = closer
    yield pipe, server
    server.close()
    closer.sock.close()
    assert pipe.stop() == 0


def _conns_for(pipe: LivePipeline, port: int) -> list[dict]:
    source = InspectSource(pipe.r, pipe.cfg.redis_prefix, pipe.cfg.run_id)
    return [c for c in source.connections() if c.get("dport") == port]


def test_pilot_rows_alerts_allow_and_seen(live) -> None:
    pipe, server = live
    # a short connection: its end labels the destination (new_process_dest) within seconds
    hold_connection(pipe.closer.port, 5).wait()
    holder = hold_connection(server.port, 60)
    try:
        wait_for(lambda: _conns_for(pipe, server.port), 15, what="the live connection in Redis")
        wait_for(
            lambda: any(a["kind"] == "new_process_dest" and a["entity"] == BASH for a in pipe.stream()),
            30,
            what="a new_process_dest alert for bash",
        )
        source = InspectSource(pipe.r, pipe.cfg.redis_prefix, pipe.cfg.run_id)
        app = InspectApp(source, refresh_seconds=0.2)

        async def drive() -> None:
            async with app.run_test(size=(220, 50)) as pilot:
                table = app.query_one("#conns_table")
                for _ in range(100):
                    await pilot.pause(0.1)
                    if table.row_count:
                        break
                rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
                mine = [r for r in rows if r[4].endswith(f":{server.port}")]
                assert mine, rows
                assert mine[0][0] == "bash" and mine[0][1] == str(holder.pid)

                # the filter box narrows the rows; a bad filter says why and keeps the last one
                await pilot.press("slash")
                await pilot.press(*f"tcp.dstport == {server.port + 1}", "enter")
                await pilot.pause(0.3)
                assert table.row_count == 0
                app.query_one("#filter").value = ""
                await pilot.press("enter")
                await pilot.pause(0.3)
                assert table.row_count >= 1

                await pilot.press("escape")
                app.query_one("#conns_table").focus()
                await pilot.press("4")
                alerts = app.query_one("#alerts_table")
                for _ in range(100):
                    await pilot.pause(0.1)
                    if any(a["entity"] == BASH and a["kind"] == "new_process_dest" for a in app.alert_rows):
                        break
                kinds = {(a["entity"], a["kind"]) for a in app.alert_rows}
                assert (BASH, "new_process_dest") in kinds, kinds
                index = next(
                    i
                    for i, a in enumerate(app.alert_rows)
                    if a["entity"] == BASH and a["kind"] == "new_process_dest"
                )
                alert = app.alert_rows[index]
                assert str(alerts.get_row_at(index)[4]) == alert["title"]
                label = alert["detail"]["label"]
                store = BaselineStore(pipe.r, DetectorKeys(pipe.cfg.redis_prefix))
                store.r.srem(store.keys.entity_set(BASH, "dest"), label)  # as if never learned
                assert label not in (store.entity(BASH) or {}).get("dest", [])
                alerts.move_cursor(row=index)
                await pilot.pause(0.1)
                await pilot.press("a")
                await pilot.pause(0.2)
                assert label in store.entity(BASH)["dest"], "allow puts the destination in the baseline"
                assert pipe.r.zscore(source.keys.acked(), alert["id"]) is not None

                other = next(i for i, a in enumerate(app.alert_rows) if a["id"] != alert["id"])
                alerts.move_cursor(row=other)
                await pilot.pause(0.1)
                await pilot.press("s")
                await pilot.pause(0.5)
                assert pipe.r.zscore(source.keys.acked(), app.alert_rows[other]["id"]) is not None

        asyncio.run(drive())
    finally:
        holder.kill()
        holder.wait()


def test_json_snapshot_and_history(live, short_tmp) -> None:
    pipe, server = live
    hold_connection(pipe.closer.port, 5).wait()
    source = InspectSource(pipe.r, pipe.cfg.redis_prefix, pipe.cfg.run_id)
    # the flow ends (FIN both ways) and moves into the history
    wait_for(lambda: source.history(BASH, 0, time.time() + 60), 20, what="the ended flow in the history")
    rows = source.history("bash", time.time() - 600, time.time() + 60)
    assert rows[0]["destination"] and pipe.closer.port in rows[0]["ports"] and rows[0]["bytes_out"] > 0
    assert not source.history("bash", 0, 1000)  # another window: nothing

    holder = hold_connection(server.port, 30)
    try:
        wait_for(lambda: _conns_for(pipe, server.port), 15, what="the live connection")
        out = pktscope(
            "inspect", "--json", "--run-dir", str(pipe.run_dir), "--filter", f"tcp.port == {server.port}"
        ).stdout
        snap = json.loads(out)
        assert set(snap) == {"status", "connections", "alerts"}
        assert snap["status"]["services"]["detector"]["state"] == "up"
        assert [c["process"]["pid"] for c in snap["connections"] if not c["ended"]] == [holder.pid]
        for alert in snap["alerts"]:  # the filter applies to alerts too: to their flow's fields
            assert server.port in (alert["detail"]["flow"]["sport"], alert["detail"]["flow"]["dport"])
        everything = json.loads(pktscope("inspect", "--json", "--run-dir", str(pipe.run_dir)).stdout)
        assert any(a["entity"] == BASH and a["kind"] == "new_process_egress" for a in everything["alerts"])
        assert len(everything["connections"]) >= len(snap["connections"])
        bad = pktscope(
            "inspect", "--json", "--run-dir", str(pipe.run_dir), "--filter", "tcp.port ==", check=False
        )
        assert bad.returncode == 2 and "--filter" in bad.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_refresh_that_lands_while_the_app_closes_is_kept_not_raised(rdb) -> None:
    """The fetch runs in a thread; its answer can arrive after the widgets are gone (CI saw it)."""
    app = InspectApp(InspectSource(rdb, "pks", "run"), refresh_seconds=60)
    status = {"services": {"decoder-0": {"state": "up"}}, "learning": False}

    async def drive() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause(0.1)
            await app.query_one("#status").remove()
            app._apply(status, [], [])  # the status line is gone: no NoMatches
            assert app.status_data is status
            app._say("cannot read Redis")

    asyncio.run(drive())
    before = app.refreshes
    app._apply(status, [], [])  # no screen at all once the app has exited
    assert app.refreshes == before + 1


def test_filter_fields_and_history_query_parsing() -> None:
    conn = {
        "src": "127.0.0.1",
        "dst": "127.0.0.1",
        "sport": 40000,
        "dport": 443,
        "proto": 6,
        "entity": "/usr/bin/curl",
        "process": {"name": "curl", "pid": 7},
        "label": "example.com",
        "name": "www.example.com",
        "bytes_out": 10,
    }
    fields = conn_fields(conn)
    assert make_filter('tcp.port == 443 && process.name == "curl"')(fields)
    assert make_filter('dest.label contains "example" and ip.addr == 127.0.0.1')(fields)
    assert not make_filter("udp.port == 443")(fields)
    assert parse_history_query("curl 2h", 10_000.0) == ("curl", 10_000.0 - 7200, 10_000.0)
    entity, start, end = parse_history_query("/usr/bin/curl 2026-12-02T10:00 2026-12-02T11:00", 0)
    assert entity == "/usr/bin/curl" and end - start == 3600


@pytest.mark.skipif(shutil.which("tmux") is None, reason="scripts/setup installs tmux")
def test_real_terminal_under_tmux(live, short_tmp) -> None:
    pipe, server = live
    holder = hold_connection(server.port, 60)
    session = f"pks{os.getpid()}"
    try:
        wait_for(lambda: _conns_for(pipe, server.port), 15, what="the live connection")
        command = f"cd {ROOT} && TERM=xterm-256color {sys.executable} -m services.cli.main inspect --run-dir {pipe.run_dir}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", command], check=True
        )

        def screen() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout

        text = wait_for(
            lambda: (s := screen()) and f":{server.port}" in s and s, 30, what="the connection row on screen"
        )
        assert "Connections" in text and "bash" in text and str(holder.pid) in text
        subprocess.run(["tmux", "send-keys", "-t", session, "4"], check=True)
        text = wait_for(
            lambda: (s := screen()) and "first outbound connection" in s and s, 15, what="the alert feed"
        )
        assert "NEW" in text or "yes" in text
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(
            lambda: (
                subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0
            ),
            15,
            what="inspect to quit on q",
        )
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        holder.kill()
        holder.wait()
