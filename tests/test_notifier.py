"""Notifications (--notify): a webhook receiver on 127.0.0.1 gets a replay's alerts grouped per
entity, filtered by severity, rate-limited without loss; none lost while the receiver is down
(retries with backoff, failures counted in `pktscope status`); none duplicated after the
notifier is killed and restarted by the supervisor."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from pipeline_helpers import (
    kill_service,
    pktscope,
    start_pktscope,
    tcp_session,
    wait_for,
    write_pcap,
)
from webhook_receiver import ALERT_ID, Receiver

from services.notifier.digest import Digest, Grouper, RateLimit, render
from services.notifier.service import NotifierService
from services.notifier.targets import TargetError, parse_target
from shared.config import PipelineConfig
from shared.redis_conn import connect
from shared.redis_keys import Keys
from shared.service import StopFlag

HOSTS, DESTS = 6, 5  # each host: its first egress (warning) + one new destination per address (notice)


def alerts_pcap(path: Path) -> Path:
    packets = []
    t = 1_700_000_000.0
    for h in range(1, HOSTS + 1):
        for d in range(1, DESTS + 1):
            packets += tcp_session(f"10.1.0.{h}", f"198.51.100.{10 * h + d}", 40000 + d, 443, t)
            t += 0.1
    return write_pcap(path, sorted(packets, key=lambda p: p[0]))


def stream_alerts(run_dir: Path) -> dict[str, dict]:
    cfg = PipelineConfig.load(run_dir / "pipeline.json")
    return {i: json.loads(f["alert"]) for i, f in stored_entries(cfg)}


def stored_entries(cfg: PipelineConfig):
    """The alert stream of a finished run, through `pktscope alerts list` (it serves the saved data)."""
    out = pktscope("alerts", "list", "--json", "--run-dir", cfg.run_dir).stdout
    return [(a["id"], {"alert": json.dumps(a)}) for a in map(json.loads, out.splitlines())]


def run_args(tmp: Path, pcap: Path, *notify: str) -> list[str]:
    args = ["run", "--read", str(pcap), "--run-dir", str(tmp / "run"), "--state-dir", str(tmp / "state")]
    args += ["--learning", "0", "--decoders", "1"]
    for url in notify:
        args += ["--notify", url]
    return args


# --- the parts, with a real Redis -------------------------------------------------------------------------
def test_target_options_are_parsed_and_checked() -> None:
    t = parse_target("json://127.0.0.1:9/hook?min_severity=warning&rate_limit=5/60&group_window=30&x=1")
    assert (t.min_severity, t.rate_count, t.rate_period, t.group_window) == ("warning", 5, 60.0, 30.0)
    assert "min_severity" not in t.apprise_url and "x=1" in t.apprise_url
    assert t.wants("critical") and not t.wants("notice")
    for bad in ("nonsense", "json://h/?min_severity=loud", "json://h/?rate_limit=fast", "bogus://x"):
        with pytest.raises(TargetError):
            parse_target(bad)
    bad_run = pktscope("run", "--read", "/dev/null", "--notify", "json://h/?rate_limit=0/1", check=False)
    assert bad_run.returncode == 2 and "rate_limit" in bad_run.stderr


def test_digest_text_names_entity_items_and_ids() -> None:
    d = Digest("/usr/bin/curl", 0.0)
    for i, label in enumerate(["a.com", "b.net", "c.org", "d.io", "e.dev"]):
        d.alerts.append(
            (
                f"17000000000{i:02d}-0",
                {
                    "kind": "new_process_dest",
                    "severity": "notice",
                    "entity": "/usr/bin/curl",
                    "detail": {"label": label},
                },
            )
        )
    title, body, severity = render([d])
    assert body.splitlines()[0] == "curl: 5 new destinations: a.com, b.net, c.org, d.io, …"
    assert "1700000000000-0" in body and "1700000000004-0" in body and severity == "notice"
    g = Grouper(window=10)
    g.add("1-0", {"entity": "a"}, now=0)
    g.add("2-0", {"entity": "a"}, now=5)
    g.add("3-0", {"entity": "b"}, now=6)
    assert g.due(9) == [] and [x.ids for x in g.due(10)] == [["1-0", "2-0"]]
    assert [x.ids for x in g.due(0, everything=True)] == [["3-0"]]
    rl = RateLimit(2, 10, now=0)
    rl.take(0)
    rl.take(0)
    assert not rl.available(1) and rl.available(5)


def test_rate_limit_merges_what_waits_and_recovery_skips_what_was_sent(redis_url, short_tmp) -> None:
    receiver = Receiver()
    try:
        cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, run_id="t")
        cfg.notify = [f"json://127.0.0.1:{receiver.port}/r?rate_limit=2/3600&group_window=0"]
        r = connect(redis_url)
        keys = Keys(cfg.redis_prefix)
        svc = NotifierService(cfg, StopFlag())
        assert svc.start()
        ids = [
            r.xadd(
                keys.alerts(),
                {
                    "kind": "new_process_dest",
                    "alert": json.dumps(
                        {
                            "kind": "new_process_dest",
                            "severity": "notice",
                            "entity": f"host:10.0.0.{n}",
                            "title": f"t{n}",
                            "destination": "x",
                            "detail": {"label": f"l{n}"},
                        }
                    ),
                },
            )
            for n in range(5)
        ]
        ch = svc.channels[0]
        entries = r.xreadgroup(ch.group, "notifier", {keys.alerts(): ">"})[0][1]
        now = time.monotonic()
        svc._feed(ch, entries, now)
        svc._deliver(ch, now)
        posts = receiver.received()
        assert len(posts) == 2, "two slots: one digest alone, then one summary of the four others"
        assert sorted(receiver.ids()) == sorted(ids)
        assert "4 alerts from 4 programs/hosts" in posts[1]["title"]
        assert r.xpending(keys.alerts(), ch.group)["pending"] == 0
        # a restarted notifier finds nothing to resend: everything was acknowledged
        svc2 = NotifierService(cfg, StopFlag())
        assert svc2.start() and svc2.channels[0].pending() == 0
        # an entry read but not delivered (killed before) is delivered by the next one, once
        extra = r.xadd(
            keys.alerts(),
            {
                "kind": "new_geo",
                "alert": json.dumps(
                    {
                        "kind": "new_geo",
                        "severity": "notice",
                        "entity": "host:10.0.0.9",
                        "title": "t9",
                        "detail": {},
                    }
                ),
            },
        )
        r.xreadgroup(ch.group, "notifier", {keys.alerts(): ">"})
        svc3 = NotifierService(cfg, StopFlag())
        assert svc3.start() and svc3.channels[0].pending() == 1
        svc3.channels[0].limit.tokens = 1
        svc3._deliver(svc3.channels[0], time.monotonic())
        assert receiver.ids().count(extra) == 1
    finally:
        receiver.stop()


# --- whole pipeline ----------------------------------------------------------------------------------------
def test_replay_alerts_grouped_per_entity_and_filtered_by_severity(short_tmp) -> None:
    receiver = Receiver()
    try:
        pcap = alerts_pcap(short_tmp / "alerts.pcap")
        base = f"json://127.0.0.1:{receiver.port}"
        pktscope(
            *run_args(
                short_tmp,
                pcap,
                f"{base}/all?group_window=3600&rate_limit=1000/1",
                f"{base}/warn?min_severity=warning&group_window=0&rate_limit=1000/1",
            )
        )
        alerts = stream_alerts(short_tmp / "run")
        assert len(alerts) == HOSTS * (1 + DESTS)
        # /all: one digest per entity (the replay ended before any window closed), every id once
        posts = receiver.received("/all")
        assert len(posts) == HOSTS
        assert sorted(receiver.ids("/all")) == sorted(alerts)
        for post in posts:
            named = {alerts[i]["entity"] for i in ALERT_ID.findall(post["message"])}
            assert len(named) == 1, post
            assert f"{DESTS} new destinations" in post["message"]
        # /warn: only the warnings (each host's first egress)
        warn = receiver.ids("/warn")
        assert sorted(warn) == sorted(
            i for i, a in alerts.items() if a["severity"] in ("warning", "critical")
        )
        assert len(warn) == HOSTS
    finally:
        receiver.stop()


def test_receiver_down_for_10_seconds_loses_nothing(short_tmp) -> None:
    receiver = Receiver()
    port = receiver.port
    receiver.stop()  # down when the replay starts
    pcap = alerts_pcap(short_tmp / "alerts.pcap")
    proc = start_pktscope(
        *run_args(short_tmp, pcap, f"json://127.0.0.1:{port}/hook?group_window=0&rate_limit=1000/1"),
        log=short_tmp / "run.log",
    )
    try:
        wait_for(lambda: (short_tmp / "run" / "pipeline.json").exists(), 20, what="the run to start")
        time.sleep(10)
        assert proc.poll() is None, "the replay waits for its notifications"
        receiver = Receiver(port=port)
        assert proc.wait(timeout=180) == 0, (short_tmp / "run.log").read_text()
        alerts = stream_alerts(short_tmp / "run")
        ids = receiver.ids()
        assert sorted(ids) == sorted(alerts) and len(alerts) == HOSTS * (1 + DESTS)
        status = pktscope("status", "--run-dir", str(short_tmp / "run"), "--json").stdout
        notifier = json.loads(status)["services"]["notifier"]
        assert int(notifier["delivery_failures"]) >= 2 and int(notifier["alerts_delivered"]) == len(alerts)
        text = pktscope("status", "--run-dir", str(short_tmp / "run")).stdout
        assert "delivery failures" in text
    finally:
        receiver.stop()
        if proc.poll() is None:
            proc.kill()


def test_notifier_killed_and_restarted_sends_nothing_twice(short_tmp) -> None:
    """kill -9 while the notifier holds read-but-undelivered alerts (its receiver went away after
    three notifications, so it is backing off): the restarted one delivers those, and only those.

    (A kill in the milliseconds between a receiver's answer and the acknowledgement would send
    that one notification again: at least once. The test kills outside that window on purpose.)
    """
    receiver = Receiver()
    port = receiver.port
    receiver.delay = 0.2
    pcap = alerts_pcap(short_tmp / "alerts.pcap")
    url = f"json://127.0.0.1:{port}/hook?group_window=0&rate_limit=1000/1"
    proc = start_pktscope(*run_args(short_tmp, pcap, url), log=short_tmp / "run.log")
    run_dir = short_tmp / "run"
    try:
        wait_for(lambda: len(receiver.received()) >= 3, 60, what="the first notifications")
        receiver.stop()
        cfg = PipelineConfig.load(run_dir / "pipeline.json")
        r = connect(cfg.effective_redis_url)
        stats = Keys(cfg.redis_prefix).stats("notifier")
        wait_for(lambda: int(r.hget(stats, "delivery_failures") or 0) >= 1, 30, what="a failed delivery")
        delivered_before = len(receiver.received())
        before = r.hget(stats, "pid")  # the service's own pid (supervisord's is its client's under fork)
        killed = kill_service(run_dir, "notifier")
        wait_for(lambda: r.hget(stats, "pid") not in (None, before), 30, what="the restarted notifier")
        first, receiver = receiver, Receiver(port=port)
        assert proc.wait(timeout=180) == 0, (short_tmp / "run.log").read_text()
        alerts = stream_alerts(run_dir)
        assert delivered_before >= 3 and len(alerts) == HOSTS * (1 + DESTS)
        before = first.ids()
        assert len(before) == len(set(before))
        before = set(before)
        after = receiver.ids()
        dupes = [i for i, n in Counter(after).items() if n > 1] + sorted(before & set(after))
        assert not dupes, f"sent twice after the kill of pid {killed}: {dupes}"
        assert sorted(before | set(after)) == sorted(alerts)
    finally:
        receiver.stop()
        if proc.poll() is None:
            proc.kill()


def test_desktop_without_a_session_bus_is_counted_not_retried(monkeypatch) -> None:
    from services.notifier.service import Channel
    from shared.observe_keys import ObserveKeys

    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    ch = Channel(parse_target("desktop://?min_severity=warning"), ObserveKeys("t"), time.monotonic())
    assert ch.send("title", "body", "warning") and ch.send("title", "body", "critical")
    assert ch.unavailable == 2
