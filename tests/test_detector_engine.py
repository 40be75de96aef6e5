"""The detection engine in-process against a real redis-server: every signal, learning,
cooldown, baseline allow, name waiting, two engines on one Redis, Cluster-style appends."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.detector.alerts import KINDS, SEVERITIES, from_entry
from services.detector.baseline_store import BaselineStore
from services.detector.engine import NAME_WAIT, DetectorEngine
from services.detector.enrich.attribution import ProcessAttributor, ProcessInfo
from services.detector.enrich.geoip import GeoIP
from services.detector.enrich.identity import BinaryIdentity
from services.detector.enrichment import Enrichers
from services.detector.keys import DetectorKeys
from shared.config import PipelineConfig
from shared.flowevents import FIELDS

LEARN = 1000.0  # learning window of these tests (packet seconds)
T0 = 1_700_000_000.0  # first packet time
AFTER = T0 + LEARN + 10  # a time after learning
MIB = 1024 * 1024
_port = [40000]


def make_cfg(**det) -> PipelineConfig:
    cfg = PipelineConfig(run_dir="/nonexistent", redis_prefix="t")
    cfg.detector.learning = LEARN
    for k, v in det.items():
        setattr(cfg.detector, k, v)
    return cfg


def flow_event(
    ev="start", ts=T0, src="10.0.0.5", dst="93.184.216.34", dport=443, sport=None, out=0, name="", **kw
):
    """A flow event as the flow-tracker sends it (shared/flowevents.py)."""
    if sport is None:
        _port[0] += 1
        sport = _port[0]
    e = {
        "ev": ev,
        "fid": sport,
        "ts": ts,
        "proto": 6,
        "ipv": 4,
        "src": src,
        "sport": sport,
        "dst": dst,
        "dport": dport,
        "outbound": True,
        "first": ts,
        "last": ts,
        "pkts_out": 1,
        "bytes_out": out,
        "pkts_in": 0,
        "bytes_in": 0,
        "d_bytes_out": out,
        "d_bytes_in": 0,
        "d_pkts_out": 1,
        "d_pkts_in": 0,
        "state": "",
        "name": name,
        "name_src": "tls.sni" if name else "",
        "app": {},
    }
    e.update(kw)
    return e


def stream(rdb, prefix="t") -> list[dict]:
    return [from_entry(i, f) for i, f in rdb.xrange(f"{prefix}:alerts")]


def kinds(alerts) -> list[str]:
    return [a["kind"] for a in alerts]


def learn_host(engine, src="10.0.0.5", dst="93.184.216.34", name="learned.example"):
    """One flow during learning, so the host entity and that destination are in the baseline."""
    return engine.process([flow_event(ts=T0, src=src, dst=dst, name=name)])


@pytest.fixture
def engine(rdb):
    return DetectorEngine(rdb, make_cfg())


# --- schema ----------------------------------------------------------------------------------
def check_schema(alert: dict) -> None:
    assert set(alert) == {"id", "kind", "severity", "ts", "entity", "destination", "title", "detail"}
    assert alert["kind"] in KINDS
    assert alert["severity"] in SEVERITIES
    assert isinstance(alert["ts"], float)
    assert isinstance(alert["detail"], dict)
    assert alert["id"] and "-" in alert["id"]
    assert alert["title"].isprintable()


# --- new_process_egress --------------------------------------------------------------------------
def test_egress_silent_in_learning_then_fires_once_per_entity(engine, rdb):
    assert learn_host(engine) == []  # learning: recorded silently
    assert engine.process([flow_event(ts=T0 + 5, src="10.0.0.6")]) == []  # still learning
    assert engine.learning
    # after learning: a new host fires once, then never again for that host
    raised = engine.process([flow_event(ts=AFTER, src="10.0.0.7", dst="1.1.1.1", dport=53)])
    assert kinds(raised) == ["new_process_egress"]  # the destination waits for a name
    egress = raised[0]
    check_schema(egress)
    assert egress["severity"] == "warning"
    assert egress["entity"] == "host:10.0.0.7"
    assert egress["destination"] == "1.1.1.1:53"
    assert egress["title"] == "host 10.0.0.7 made its first outbound connection, to 1.1.1.1:53"
    assert egress["detail"]["flow"]["dst"] == "1.1.1.1"
    assert egress["ts"] == AFTER
    assert not engine.learning
    again = engine.process([flow_event(ts=AFTER + 1, src="10.0.0.7", dst="1.1.1.1", dport=53)])
    assert again == []
    # the entities learned during learning never fire
    assert engine.process([flow_event(ts=AFTER + 2, src="10.0.0.5")]) == []
    assert engine.process([flow_event(ts=AFTER + 2, src="10.0.0.6", dst="93.184.216.34")]) == []
    # the stream holds exactly what was returned, with the same ids
    assert [a["id"] for a in stream(rdb)] == [a["id"] for a in raised]
    assert stream(rdb)[0] == egress


def test_learning_window_is_packet_time_and_shared(rdb):
    first = DetectorEngine(rdb, make_cfg())
    learn_host(first)
    start, end = rdb.hmget("t:learning", "start", "end")
    assert float(start) == T0 and float(end) == T0 + LEARN
    # a second engine (or a restarted one) resumes the same window instead of starting its own
    second = DetectorEngine(rdb, make_cfg())
    assert second.learning_end == T0 + LEARN
    assert second.process([flow_event(ts=T0 + LEARN - 1, src="10.0.0.9")]) == []
    assert kinds(second.process([flow_event(ts=T0 + LEARN, src="10.0.0.10")]))[0] == "new_process_egress"


def test_egress_cooldown_after_entity_reset(engine, rdb):
    learn_host(engine)
    first = engine.process([flow_event(ts=AFTER, src="10.0.0.8", name="x.example")])
    assert kinds(first) == ["new_process_egress", "new_process_dest"]
    store = BaselineStore(rdb, DetectorKeys("t"))
    store.reset("host:10.0.0.8")  # forgotten: the next flow is its "first" again ...
    engine.maintenance()  # (the service calls it every few seconds: it notices resets)
    assert (
        engine.process([flow_event(ts=AFTER + 60, src="10.0.0.8", name="x.example")]) == []
    )  # ... in cooldown
    assert engine.c["alerts_suppressed"] == 2
    store.reset("host:10.0.0.8")
    engine.maintenance()
    raised = engine.process([flow_event(ts=AFTER + 3700, src="10.0.0.8", name="x.example")])  # 1 h later
    assert kinds(raised) == ["new_process_egress", "new_process_dest"]


def test_inbound_flows_are_ignored(engine, rdb):
    learn_host(engine)
    assert engine.process([flow_event(ts=AFTER, src="8.8.8.8", dst="10.0.0.5", outbound=False)]) == []
    assert rdb.zscore("t:entities", "host:8.8.8.8") is None


def test_malformed_events_are_counted_and_skipped(engine):
    learn_host(engine)
    bad = [None, 5, {"ev": "start"}, flow_event(ts="soon"), flow_event(ev="bogus"), flow_event(src=7)]
    raised = engine.process([*bad, flow_event(ts=AFTER, src="10.0.0.20")])
    assert engine.c["bad_events"] == len(bad)
    assert kinds(raised)[0] == "new_process_egress"


def test_control_characters_never_reach_the_title(engine):
    learn_host(engine)
    evil = "evil\x1b]0;pwned\x07\u202e.example.com"
    raised = engine.process([flow_event(ts=AFTER, src="10.0.0.21", name=evil)])
    assert raised
    for alert in raised:
        assert alert["title"].isprintable()
        assert "\x1b" not in json.dumps(alert, ensure_ascii=False)
        assert "\\x1b" in alert["destination"]


# --- new_process_dest ------------------------------------------------------------------------
def test_new_destination_fires_once_per_label_and_allow_silences(engine, rdb):
    learn_host(engine, name="learned.example")
    # known registrable domain, different host name: silent
    assert engine.process([flow_event(ts=AFTER, name="cdn.learned.example")]) == []
    raised = engine.process([flow_event(ts=AFTER + 1, name="www.example.com")])
    assert kinds(raised) == ["new_process_dest"]
    dest = raised[0]
    check_schema(dest)
    assert dest["severity"] == "notice"
    assert dest["title"] == "host 10.0.0.5 contacted a new destination: example.com (www.example.com)"
    assert dest["detail"]["label"] == "example.com"
    assert dest["destination"] == "www.example.com"
    assert engine.process([flow_event(ts=AFTER + 2, name="api.example.com")]) == []
    # `baseline allow` adds the label: it never fires
    BaselineStore(rdb, DetectorKeys("t")).allow("host:10.0.0.5", label="allowed.org")
    assert engine.process([flow_event(ts=AFTER + 3, name="www.allowed.org")]) == []
    assert len(stream(rdb)) == 1


def test_new_destination_silent_during_learning(engine, rdb):
    learn_host(engine)
    assert engine.process([flow_event(ts=T0 + 10, name="during.example")]) == []
    assert "during.example" in rdb.smembers("t:ent:{host:10.0.0.5}:dest")
    assert engine.process([flow_event(ts=AFTER, name="during.example")]) == []


def test_destination_waits_for_the_sni_of_a_later_update(engine):
    learn_host(engine)
    start = flow_event(ts=AFTER, dst="1.2.3.4")
    assert engine.process([start]) == []  # no name yet: waits
    update = dict(start, ev="update", ts=AFTER + 0.2, name="late.example.net", name_src="tls.sni")
    raised = engine.process([update])
    assert kinds(raised) == ["new_process_dest"]
    assert raised[0]["detail"]["label"] == "example.net"
    assert raised[0]["ts"] == AFTER  # about the flow's start


def test_unnamed_destination_labelled_by_address_after_the_wait(engine):
    learn_host(engine)
    assert engine.process([flow_event(ts=AFTER, dst="5.6.7.8")]) == []
    assert engine.tick(AFTER + NAME_WAIT / 2) == []
    raised = engine.tick(AFTER + NAME_WAIT)
    assert kinds(raised) == ["new_process_dest"]
    assert raised[0]["detail"]["label"] == "5.6.7.8"
    assert raised[0]["destination"] == "5.6.7.8:443"


def test_flow_ending_before_the_wait_is_labelled_at_its_end(engine):
    learn_host(engine)
    start = flow_event(ts=AFTER, dst="9.9.9.9")
    end = dict(start, ev="end", ts=AFTER + 0.1, reason="fin")
    assert kinds(engine.process([start, end])) == ["new_process_dest"]


def test_destination_cooldown(engine):
    learn_host(engine)
    assert kinds(engine.process([flow_event(ts=AFTER, name="a.example.org")])) == ["new_process_dest"]
    BaselineStore(engine.r, DetectorKeys("t")).reset("host:10.0.0.5")  # forget it, keep cooldowns
    engine.maintenance()
    engine.process([flow_event(ts=AFTER + 1, name="other.example.io")])  # egress fires again (new)
    assert engine.process([flow_event(ts=AFTER + 2, name="a.example.org")]) == []
    assert engine.c["alerts_suppressed"] >= 1


# --- new_geo (test MaxMind databases) ------------------------------------------------------------
@pytest.fixture
def geo_engine(rdb, tmp_path):
    from mmdb_factory import build_asn_db, build_country_db

    cc = build_country_db(tmp_path / "cc.mmdb", {"8.8.8.0/24": "US", "1.1.1.0/24": "US", "5.9.0.0/16": "DE"})
    asn = build_asn_db(
        tmp_path / "asn.mmdb",
        {
            "8.8.8.0/24": (15169, "GOOGLE"),
            "1.1.1.0/24": (13335, "CLOUDFLARENET"),
            "5.9.0.0/16": (24940, "Hetzner"),
        },
    )
    enr = Enrichers(geoip=GeoIP(str(cc), str(asn)))
    return DetectorEngine(rdb, make_cfg(), enrichers=enr)


def test_new_country_and_new_as(geo_engine, rdb):
    eng = geo_engine
    assert eng.process([flow_event(ts=T0, dst="8.8.8.8", name="dns.google")]) == []  # learn US/GOOGLE
    assert rdb.smembers("t:ent:{host:10.0.0.5}:cc") == {"US"}
    assert rdb.smembers("t:ent:{host:10.0.0.5}:asn") == {"15169"}
    assert rdb.smembers("t:ent:{host:10.0.0.5}:dest") == {"GOOGLE"}  # label: AS organisation
    assert eng.process([flow_event(ts=AFTER, dst="8.8.8.8")]) == []  # all known
    # same country, new AS (and new AS organisation label)
    raised = eng.process([flow_event(ts=AFTER + 1, dst="1.1.1.1", name="one.one.one.one")])
    assert sorted(kinds(raised)) == ["new_geo", "new_process_dest"]
    geo = next(a for a in raised if a["kind"] == "new_geo")
    check_schema(geo)
    assert geo["detail"]["new"] == "asn" and geo["detail"]["asn"] == 13335
    assert geo["title"] == "host 10.0.0.5 connected to a new network: AS13335 (CLOUDFLARENET) via one.one.one.one"
    dest = next(a for a in raised if a["kind"] == "new_process_dest")
    assert dest["detail"]["label"] == "CLOUDFLARENET"  # CDN-safe: the AS, not the name
    # new country and new AS in one flow: two alerts, one per new fact, each with its own title
    raised = eng.process([flow_event(ts=AFTER + 2, dst="5.9.1.1")])
    geo = {a["detail"]["new"]: a for a in raised if a["kind"] == "new_geo"}
    assert set(geo) == {"country", "asn"}
    assert geo["country"]["detail"]["country"] == "DE"
    assert geo["country"]["title"].startswith("host 10.0.0.5 connected to a new country: DE")
    assert geo["asn"]["title"].startswith("host 10.0.0.5 connected to a new network: AS24940 (Hetzner)")
    assert geo["country"]["id"] != geo["asn"]["id"]
    assert len(rdb.xrange("t:alerts")) >= 2
    assert eng.process([flow_event(ts=AFTER + 3, dst="5.9.2.2")]) == []


def test_geo_allow_silences_country_and_asn(geo_engine, rdb):
    eng = geo_engine
    eng.process([flow_event(ts=T0, dst="8.8.8.8")])
    store = BaselineStore(rdb, DetectorKeys("t"))
    store.allow("host:10.0.0.5", country="de")
    store.allow("host:10.0.0.5", asn=24940)
    store.allow("host:10.0.0.5", label="Hetzner")
    assert eng.process([flow_event(ts=AFTER, dst="5.9.1.1")]) == []


def test_geo_cooldown(geo_engine, rdb):
    eng = geo_engine
    eng.process([flow_event(ts=T0, dst="8.8.8.8")])
    raised = eng.process([flow_event(ts=AFTER, dst="5.9.1.1", name="a.example.de")])
    assert "new_geo" in kinds(raised)
    BaselineStore(rdb, DetectorKeys("t")).reset("host:10.0.0.5")  # forget DE/AS24940, keep cooldowns
    eng.maintenance()
    suppressed = eng.c["alerts_suppressed"]
    assert "new_geo" not in kinds(eng.process([flow_event(ts=AFTER + 60, dst="5.9.1.1")]))
    assert eng.c["alerts_suppressed"] > suppressed
    assert "DE" in rdb.smembers("t:ent:{host:10.0.0.5}:cc")  # recorded all the same


def test_geo_silent_during_learning(geo_engine, rdb):
    eng = geo_engine
    assert eng.process([flow_event(ts=T0, dst="8.8.8.8"), flow_event(ts=T0 + 1, dst="5.9.1.1")]) == []
    assert rdb.smembers("t:ent:{host:10.0.0.5}:cc") == {"US", "DE"}
    assert eng.process([flow_event(ts=AFTER, dst="5.9.3.3")]) == []


# --- volume_spike --------------------------------------------------------------------------------
def feed_intervals(engine, start, sizes, src="10.0.0.5", interval=60.0):
    """One event per interval with that many outbound bytes; returns all alerts raised."""
    raised = []
    for i, size in enumerate(sizes):
        raised += engine.process(
            [flow_event(ev="update", ts=start + i * interval + 1, src=src, out=size, name="learned.example")]
        )
    return raised


def test_volume_spike_after_baseline(engine, rdb):
    learn_host(engine)
    normal = [MIB + (i % 3) * 100_000 for i in range(10)]
    assert feed_intervals(engine, T0 + 60, normal) == []  # learning: only the EWMA fills
    vol = rdb.hgetall("t:ent:{host:10.0.0.5}:vol")
    assert int(vol["n"]) == 9  # the 10th interval is still open
    base = AFTER + 60 - (AFTER % 60)
    assert feed_intervals(engine, base, normal[:3]) == []
    # a 30 MiB interval: raised when the next event (a later interval) closes it
    assert feed_intervals(engine, base + 180, [30 * MIB]) == []
    raised = engine.tick(base + 240)
    assert kinds(raised) == ["volume_spike"]
    spike = raised[0]
    check_schema(spike)
    assert spike["severity"] == "critical"  # >= 10x the mean
    assert spike["detail"]["bytes"] == 30 * MIB
    assert spike["detail"]["z"] > 4 and spike["detail"]["mean"] < 2 * MIB
    assert spike["ts"] == base + 240  # the end of the interval
    assert spike["title"].startswith("host 10.0.0.5 sent 30.0 MiB in 60 s, ")
    assert stream(rdb)[-1] == spike
    # the spike widened the variance: after 15 normal intervals a new spike stands out again,
    # but it is still within the cooldown (1 h) of the first: suppressed and counted
    assert feed_intervals(engine, base + 240, normal + normal[:5] + [30 * MIB, MIB]) == []
    assert engine.c["alerts_suppressed"] == 1
    # once the cooldown is over, the next spike is reported
    later = base + 240 + 60 * 60
    assert kinds(feed_intervals(engine, later, normal + normal[:5] + [30 * MIB, MIB])) == ["volume_spike"]


def test_volume_warning_below_ten_times(engine):
    learn_host(engine)
    steady = [4 * MIB + (i % 2) * 10_000 for i in range(12)]
    base = AFTER + 60 - (AFTER % 60)
    assert feed_intervals(engine, base, steady) == []
    raised = feed_intervals(engine, base + 12 * 60, [12 * MIB, MIB])
    assert kinds(raised) == ["volume_spike"] and raised[0]["severity"] == "warning"


def test_volume_needs_floor_and_min_intervals(engine):
    learn_host(engine)
    base = AFTER + 60 - (AFTER % 60)
    # a huge jump after only 3 intervals: too few to judge
    assert feed_intervals(engine, base, [1000, 1000, 1000, 50 * MIB, 10]) == []
    # many tiny intervals then a 40x jump that stays under the 5 MiB floor: silent
    learn_host(engine, src="10.0.0.30")
    assert feed_intervals(engine, base + 600, [10_000] * 10 + [400_000, 10], src="10.0.0.30") == []


def test_volume_split_between_two_engines_counts_once(rdb):
    a, b = DetectorEngine(rdb, make_cfg()), DetectorEngine(rdb, make_cfg())
    learn_host(a)
    base = AFTER + 60 - (AFTER % 60)
    for i in range(10):
        (a if i % 2 else b).process([flow_event(ev="update", ts=base + i * 60 + 1, out=MIB)])
    # one 20 MiB interval reported in two halves, one to each engine
    a.process([flow_event(ev="update", ts=base + 600 + 1, out=10 * MIB)])
    b.process([flow_event(ev="update", ts=base + 600 + 2, out=10 * MIB)])
    raised = a.tick(base + 660) + b.tick(base + 660)
    assert kinds(raised) == ["volume_spike"]
    assert raised[0]["detail"]["bytes"] == 20 * MIB


# --- identity_change -----------------------------------------------------------------------------
class FixedAttributor:
    """Attributes every flow to one executable (a file the test rewrites); the real
    ProcessAttributor is exercised in test_identity_change_of_a_real_process."""

    def __init__(self, exe: str) -> None:
        self.exe = exe

    def lookup(self, proto, lip, lport, rip, rport):
        return ProcessInfo(0, self.exe, Path(self.exe).name, self.exe, "root", "/bin/sh", False)


def test_identity_change(rdb, tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(b"version 1")
    enr = Enrichers(attributor=FixedAttributor(str(exe)), identity=BinaryIdentity())
    eng = DetectorEngine(rdb, make_cfg(), enrichers=enr)
    assert eng.process([flow_event(ts=T0, name="x.example")]) == []
    exe.write_bytes(b"version 2 (updated during learning)")
    assert eng.process([flow_event(ts=T0 + 10, name="x.example")]) == []  # learning: accepted
    assert eng.process([flow_event(ts=AFTER, name="x.example")]) == []
    exe.write_bytes(b"version 3 (trojaned)")
    time.sleep(0.01)
    raised = eng.process([flow_event(ts=AFTER + 1, name="x.example")])
    assert kinds(raised) == ["identity_change"]
    alert = raised[0]
    check_schema(alert)
    assert alert["severity"] == "critical" and alert["entity"] == str(exe)
    import hashlib

    old = hashlib.sha256(b"version 2 (updated during learning)").hexdigest()
    new = hashlib.sha256(b"version 3 (trojaned)").hexdigest()
    assert alert["detail"]["old_identity"] == old and alert["detail"]["new_identity"] == new
    assert (
        alert["title"]
        == f"tool's binary changed (sha256 {old[:12]}... -> {new[:12]}...) and it connected out to x.example"
    )
    assert stream(rdb)[-1] == alert
    assert eng.process([flow_event(ts=AFTER + 2, name="x.example")]) == []  # cooldown
    # accepting the new identity silences it for good
    BaselineStore(rdb, DetectorKeys("t")).allow(str(exe), identity=new)
    assert eng.process([flow_event(ts=AFTER + 7200, name="x.example")]) == []


def _connect_with(exe: Path, port: int) -> subprocess.Popen:
    code = (
        f"import socket,sys,time;s=socket.create_connection(('127.0.0.1',{port}));"
        "print(s.getsockname()[1],flush=True);time.sleep(20)"
    )
    return subprocess.Popen([str(exe), "-S", "-c", code], stdout=subprocess.PIPE, text=True)


def test_identity_change_of_a_real_process(rdb, tmp_path):
    """Real processes, real sockets, real /proc: the entity is the executable, and replacing it
    on disk by another build raises identity_change when the new build connects out."""
    python = Path(sys.executable).resolve()
    exe = tmp_path / "agent"
    shutil.copy(python, exe)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    enr = Enrichers(attributor=ProcessAttributor(min_refresh_interval=0), identity=BinaryIdentity())
    eng = DetectorEngine(rdb, make_cfg(), enrichers=enr)
    procs = []
    try:
        for ts, build in ((T0, b""), (AFTER, b"\0patched")):
            if build:  # a new build replaces the file (rename over it, as package managers do)
                tmp = tmp_path / "agent.new"
                shutil.copy(python, tmp)
                with open(tmp, "ab") as f:
                    f.write(build)
                tmp.rename(exe)
            proc = _connect_with(exe, port)
            procs.append(proc)
            sport = int(proc.stdout.readline())
            listener.accept()[0].close()
            ev = flow_event(ts=ts, src="127.0.0.1", sport=sport, dst="127.0.0.1", dport=port)
            raised = eng.process([ev])
            if ts == T0:
                assert raised == []
                assert rdb.zscore("t:entities", str(exe)) is not None
            else:
                assert kinds(raised) == ["identity_change"]
                assert raised[0]["entity"] == str(exe)
                assert raised[0]["detail"]["pid"] == proc.pid
                assert raised[0]["detail"]["process"] == "agent"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        listener.close()


# --- several detectors on one Redis --------------------------------------------------------------
def test_two_engines_fed_the_same_events_raise_each_alert_once(rdb):
    a, b = DetectorEngine(rdb, make_cfg()), DetectorEngine(rdb, make_cfg())
    learn_host(a)
    events = [flow_event(ts=AFTER + i, src=f"10.0.1.{i}", name=f"n{i}.example.com") for i in range(20)]
    raised = a.process(events) + b.process(events)
    assert sorted(kinds(raised)) == ["new_process_dest"] * 20 + ["new_process_egress"] * 20
    assert len(stream(rdb)) == 40


def test_two_processes_racing_on_one_redis_raise_each_alert_once(redis_url, rdb):
    """Two real processes push the same 200 new entities at the same time."""
    learn_host(DetectorEngine(rdb, make_cfg()))
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import redis
from test_detector_engine import AFTER, DetectorEngine, flow_event, make_cfg
r = redis.Redis.from_url({redis_url!r}, decode_responses=True)
e = DetectorEngine(r, make_cfg())
n = 0
for i in range(200):
    ev = flow_event(ts=AFTER + i, src="10.2.%d.%d" % divmod(i, 250), sport=1000 + i, name=f"r{{i}}.example.com")
    n += len(e.process([ev]))
print(n)
"""
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    counts = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(counts) == 400  # 200 egress + 200 dest, each won by one process
    entries = stream(rdb)
    assert len(entries) == 400
    assert len({(a["kind"], a["entity"]) for a in entries}) == 400


def test_cluster_mode_appends_after_the_decision(rdb):
    cfg = make_cfg()
    a = DetectorEngine(rdb, cfg, append_in_script=False)
    b = DetectorEngine(rdb, cfg, append_in_script=False)
    learn_host(a)
    ev = flow_event(ts=AFTER, src="10.0.0.40", name="c.example.com")
    raised = a.process([ev]) + b.process([ev])
    assert kinds(raised) == ["new_process_egress", "new_process_dest"]
    assert [x["id"] for x in stream(rdb)] == [x["id"] for x in raised]


def test_stream_is_capped(rdb):
    eng = DetectorEngine(rdb, make_cfg(alert_stream_max=50))
    learn_host(eng)
    for i in range(30):
        eng.process([flow_event(ts=AFTER + i, src=f"10.3.0.{i}", name=f"s{i}.example.com")])
    assert eng.c["alerts"] == 60
    assert rdb.xlen("t:alerts") < 60  # MAXLEN ~ 50 trims whole macro-nodes (100 entries by default)


def test_redis_restart_mid_run_is_retried_and_scripts_reloaded(tmp_path_factory):
    """A Redis that goes away blocks the engine (backpressure) until it is back; the new server
    has no scripts cached, so the engine loads them again and the batch goes through."""
    import threading

    import redis
    from conftest import start_redis

    directory = tmp_path_factory.mktemp("flaky")
    server, url = start_redis(directory)
    r = redis.Redis.from_url(url, decode_responses=True)
    eng = DetectorEngine(r, make_cfg())
    learn_host(eng)
    server.terminate()
    server.wait(timeout=10)
    restarted = []
    timer = threading.Timer(0.5, lambda: restarted.append(start_redis(directory)[0]))
    timer.start()
    try:
        raised = eng.process([flow_event(ts=AFTER, src="10.0.0.50", name="back.example")])
        assert eng.redis_errors > 0
        assert kinds(raised) == ["new_process_egress", "new_process_dest"]
        assert len(stream(r)) == 2
    finally:
        timer.join()
        r.close()
        for proc in restarted:
            proc.terminate()
            proc.wait(timeout=10)


def test_entity_sets_and_entities_are_bounded(rdb, monkeypatch):
    import services.detector.engine as engine_module

    monkeypatch.setattr(engine_module, "SET_CAP", 5)
    eng = DetectorEngine(rdb, make_cfg())
    eng.process([flow_event(ts=T0 + i, name=f"d{i}.example{i}.com") for i in range(8)])
    assert rdb.scard("t:ent:{host:10.0.0.5}:dest") == 5  # random members evicted past the cap
    for i in range(5):
        eng.process([flow_event(ts=T0 + 100 + i * 10, src=f"10.5.0.{i}")])
    assert rdb.zcard("t:entities") == 6
    assert eng.enforce_entity_cap(limit=3) == 3
    # the least recently seen go, with all their keys
    assert rdb.zrange("t:entities", 0, -1) == ["host:10.5.0.2", "host:10.5.0.3", "host:10.5.0.4"]
    assert not rdb.exists("t:ent:{host:10.0.0.5}", "t:ent:{host:10.0.0.5}:dest", "t:ent:{host:10.5.0.0}")


def test_volume_spike_during_learning_is_silent(engine, rdb):
    learn_host(engine)
    sizes = [MIB] * 10 + [50 * MIB, MIB]  # all inside the 1000 s learning window
    assert feed_intervals(engine, T0 + 60, sizes) == []
    assert (
        int(rdb.hget("t:ent:{host:10.0.0.5}:vol", "n")) == 11
    )  # the spike went into the EWMA (the last is open)


def test_a_flow_deferred_by_the_attributor_is_attributed_on_its_next_event(rdb, tmp_path):
    """Scans are rate limited, so a new flow's first lookup can be deferred (host entity); its next
    event asks again and the flow becomes its program's, with that program's first-egress alert."""
    python = Path(sys.executable).resolve()
    exe_a, exe_b = tmp_path / "early-agent", tmp_path / "late-agent"
    shutil.copy(python, exe_a)
    shutil.copy(python, exe_b)
    DetectorEngine(rdb, make_cfg()).process([flow_event(ts=T0, name="x.example")])  # learning starts
    attributor = ProcessAttributor(min_refresh_interval=2.0, max_wait_share=0.0)
    attributor._wait_credit = 0.0  # and no start-up credit: a lookup between scans never waits
    eng = DetectorEngine(rdb, make_cfg(), enrichers=Enrichers(attributor=attributor))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    procs = []
    try:
        ports = {}
        for exe in (exe_a, exe_b):
            proc = _connect_with(exe, port)
            procs.append(proc)
            ports[exe] = int(proc.stdout.readline())
            listener.accept()[0].close()
            if exe == exe_a:  # the first lookup scans; B connects after that scan
                ev_a = flow_event(ts=AFTER, src="127.0.0.1", sport=ports[exe_a], dst="127.0.0.1", dport=port)
                raised = eng.process([ev_a])
                assert [(a["kind"], a["entity"]) for a in raised] == [("new_process_egress", str(exe_a))]
        ev_b = dict(src="127.0.0.1", sport=ports[exe_b], dst="127.0.0.1", dport=port)
        raised = eng.process([flow_event(ts=AFTER + 1, **ev_b)])
        assert attributor.counters["deferred"] == 1, (attributor.counters, raised)
        assert [(a["kind"], a["entity"]) for a in raised] == [("new_process_egress", "host:127.0.0.1")]
        assert eng.c["unattributed"] == 1
        time.sleep(2.1)  # the next scan is allowed now
        raised = eng.process([flow_event(ev="update", ts=AFTER + 2, out=100, **ev_b)])
        assert [(a["kind"], a["entity"]) for a in raised] == [("new_process_egress", str(exe_b))]
        assert raised[0]["detail"]["pid"] == procs[1].pid
        assert (eng.c["unattributed"], eng.c["attributed_late"]) == (0, 1)
        # the end event labels the destination for the program, and asks the attributor nothing
        scans = attributor.counters["scans"]
        raised = eng.process([flow_event(ev="end", ts=AFTER + 3, **ev_b)])
        assert [(a["kind"], a["entity"]) for a in raised] == [("new_process_dest", str(exe_b))]
        assert attributor.counters["scans"] == scans
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        listener.close()


# --- hostile rows ----------------------------------------------------------------------------------
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(*([_ANY] * len(FIELDS))), min_size=1, max_size=20), outbound=st.booleans())
def test_rows_of_any_shape_never_stop_the_engine(engine, rows, outbound):
    """Flow events come from packets: whatever a row holds, the engine counts it and goes on."""
    out = FIELDS.index("outbound")
    rows = [(*r[:out], outbound or r[out], *r[out + 1 :]) for r in rows]
    before = engine.c["events_in"] + engine.c["bad_events"]
    engine.process(rows)
    assert engine.c["events_in"] + engine.c["bad_events"] == before + len(rows)


# --- events behind packet time -------------------------------------------------------------------
def test_late_events_are_counted_and_scored_in_their_own_interval_when_it_is_open(rdb):
    eng = DetectorEngine(rdb, make_cfg(learning=0.0, volume_interval=60.0))
    base = 1_700_000_040.0  # interval [1_700_000_040, +60) after flooring to 60 s
    istart = math.floor(base / 60.0) * 60.0
    eng.process([flow_event(ts=istart + 50, out=1000, sport=1)])
    assert eng.c["late_events"] == 0
    eng.process([flow_event(ts=istart + 10, out=500, sport=2)])  # behind the watermark, same interval
    assert eng.c["late_events"] == 1 and eng.c["volume_behind"] == 0
    assert rdb.hget("t:ent:{host:10.0.0.5}:vol", "cur_bytes") == "1500"  # scored in its own interval
    eng.process([flow_event(ts=istart + 70, out=100, sport=3)])  # opens the next interval
    eng.process([flow_event(ts=istart + 20, out=700, sport=4)])  # its interval is closed now
    assert eng.c["late_events"] == 2 and eng.c["volume_behind"] == 1  # counted, never moved
    assert rdb.hget("t:ent:{host:10.0.0.5}:vol", "cur_bytes") == "100"
    assert rdb.hget("t:ent:{host:10.0.0.5}:vol", "last_bytes") == "1500"


def test_volume_of_a_replayed_capture_is_not_counted_twice(rdb):
    """A second run over the same packets (same state) adds nothing to the open interval."""
    events = [flow_event(ts=T0 + 5 * i, out=1000, sport=100 + i) for i in range(6)]
    cfg1 = make_cfg(learning=0.0)
    cfg1.run_id = "run-one"
    DetectorEngine(rdb, cfg1).process([dict(e) for e in events])
    before = rdb.hgetall("t:ent:{host:10.0.0.5}:vol")
    cfg2 = make_cfg(learning=0.0)
    cfg2.run_id = "run-two"
    again = DetectorEngine(rdb, cfg2)
    again.process([dict(e) for e in events])
    assert rdb.hgetall("t:ent:{host:10.0.0.5}:vol") == before
    assert again.c["volume_behind"] >= 1
