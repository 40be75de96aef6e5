"""EVE JSON (`pktscope run --eve-log`): every line valid against tests/data/eve_schema.json, Suricata's
field names carrying the values the reference IDS logged for the corpus captures, one flow_id
per flow across its flow/dns/tls events, community_id as the spec computes it, SIGHUP reopen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
from conftest import BENCH_PCAP, CORPUS
from pipeline_helpers import pktscope

from services.detector.eve import EveWriter, eve_time
from shared.community_id import community_id

SCHEMA = json.loads((Path(__file__).parent / "data" / "eve_schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# captures with TLS (SNI, JA3, JA3S, JA4), QUIC (JA4), HTTP and DNS that the reference IDS logged
CAPTURES = (
    "pcaps/bug-2646-01/input.pcap",
    "pcaps/http-ipv6/input.pcap",
    "pcaps/ja4-tls-quic/input.pcap",
    "pcaps/cond-log-dns-dig/input.pcap",
    "pcaps/tls-duplicate-hello/input.pcap",
)
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "IPv6-ICMP": 58}


def eve_of(pcap: Path, tmp: Path, *extra: str) -> list[dict]:
    log = tmp / "eve.json"
    pktscope(
        "run",
        "--read",
        str(pcap),
        "--run-dir",
        str(tmp / "run"),
        "--state-dir",
        str(tmp / "state"),
        "--learning",
        "0",
        "--decoders",
        "1",
        "--eve-log",
        str(log),
        *extra,
    )
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    for event in events:
        errors = sorted(VALIDATOR.iter_errors(event), key=str)
        assert not errors, f"{pcap.name}: {event}\n{errors[0]}"
    return events


def _path(node: object, keys: list[str]) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_path(n, keys) for n in node)) if node else set()
    if not keys:
        return {str(node)}
    if isinstance(node, dict) and keys[0] in node:
        return _path(node[keys[0]], keys[1:])
    return set()


def test_corpus_captures_validate_and_carry_suricata_fields(short_tmp: Path) -> None:
    expected = [json.loads(line) for line in (CORPUS / "expected.jsonl").read_text().splitlines()]
    wanted = [
        e for e in expected if e["pcap"] in CAPTURES and e["eve_event_type"] in ("tls", "quic", "http", "dns")
    ]
    assert len(wanted) >= 8

    def run(i_pcap):
        i, pcap = i_pcap
        d = short_tmp / str(i)
        d.mkdir()
        return pcap, eve_of(CORPUS / pcap, d)

    with ThreadPoolExecutor(max_workers=2) as pool:
        logs = dict(pool.map(run, enumerate(CAPTURES)))
    missing = []
    for exp in wanted:
        events = [e for e in logs[exp["pcap"]] if e["event_type"] == exp["eve_event_type"]]
        found = set().union(*(_path(e, exp["eve_field"].split(".")) for e in events)) if events else set()
        if str(exp["value"]) not in found:
            missing.append((exp["pcap"], exp["eve_field"], exp["value"]))
    assert not missing, missing
    for events in logs.values():
        assert {"flow"} <= {e["event_type"] for e in events}


@pytest.mark.slow
def test_bench_capture_flow_ids_agree_across_event_types(short_tmp: Path) -> None:
    events = eve_of(BENCH_PCAP, short_tmp)
    flows = [e for e in events if e["event_type"] == "flow"]
    by_id = {e["flow_id"]: e for e in flows}
    assert len(by_id) == len(flows) > 5000, "one flow event per flow, each with its own flow_id"
    kinds = defaultdict(int)
    for e in events:
        if e["event_type"] in ("dns", "tls", "http", "quic"):
            kinds[e["event_type"]] += 1
            flow = by_id[e["flow_id"]]
            for field in ("src_ip", "src_port", "dest_ip", "dest_port", "proto", "community_id"):
                assert e[field] == flow[field], (field, e, flow)
    assert kinds["dns"] > 100 and kinds["tls"] > 10, dict(kinds)
    for e in flows[:2000]:
        proto = PROTO_NUMBERS.get(e["proto"], 0)
        if proto in (6, 17):
            want = community_id(proto, e["src_ip"], e["dest_ip"], e["src_port"], e["dest_port"])
            assert e["community_id"] == want
    # ICMP: the flow's id is its first packet's, as tshark's Community ID dissector computes it
    icmp = [e for e in flows if e["proto"] in ("ICMP", "IPv6-ICMP")]
    assert len(icmp) > 50 and all("icmp_type" in e for e in icmp)
    oracle = _tshark_icmp_community_ids(BENCH_PCAP)
    keys = [(e["flow"]["start"], e["src_ip"], e["dest_ip"]) for e in icmp]
    # a flow that starts with an IP fragment: tshark shows the ICMP at the reassembling frame
    unmatched = [k for k in keys if k not in oracle]
    assert len(unmatched) <= 2, unmatched
    compared = [(k, e["community_id"], oracle[k]) for k, e in zip(keys, icmp, strict=True) if oracle.get(k)]
    assert len(compared) > 50 and all(ours == theirs for _, ours, theirs in compared), [
        c for c in compared if c[1] != c[2]
    ][:5]


def _tshark_icmp_community_ids(pcap: Path) -> dict[tuple[str, str, str], str | None]:
    """(EVE time, src, dst) -> tshark's communityid of every ICMP/ICMPv6 packet; None where the
    packet has two address pairs (an ICMP error quoting one, or a tunnel) and the id is ambiguous."""
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "--enable-protocol", "communityid", "-Y", "icmp or icmpv6"]
        + ["-T", "fields", "-E", "separator=|", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst"]
        + ["-e", "ipv6.src", "-e", "ipv6.dst", "-e", "communityid"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[tuple[str, str, str], str] = {}
    for line in out.splitlines():
        epoch, src4, dst4, src6, dst6, cid = line.split("|")
        src, dst = (src4, dst4) if src4 else (src6, dst6)
        when = eve_time(float(epoch))
        if "," in src or "," in dst:  # the flow is the outer pair's (ICMP error) or the inner's (tunnel)
            for pair in ((src.split(",")[0], dst.split(",")[0]), (src.split(",")[-1], dst.split(",")[-1])):
                found.setdefault((when, *pair), None)
        else:
            found.setdefault((when, src, dst), cid)
    return found


@pytest.mark.parametrize("shards", [(), ("--flowtrackers", "2", "--detectors", "2")], ids=["one", "sharded"])
def test_alerts_are_logged_with_their_flow(short_tmp: Path, shards: tuple[str, ...]) -> None:
    events = eve_of(CORPUS / CAPTURES[0], short_tmp, *shards)
    alerts = [e for e in events if e["event_type"] == "alert"]
    assert alerts, "a first replay with --learning 0 alerts on the host's first egress"
    flow_ids = {e["flow_id"] for e in events if e["event_type"] == "flow"}
    for alert in alerts:
        assert alert["alert"]["category"] in ("new_process_egress", "new_process_dest", "new_geo")
        assert alert["flow_id"] in flow_ids
        assert alert["alert"]["metadata"]["pktscope_id"][0]


def test_sighup_reopens_the_log(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    writer = EveWriter(str(path))
    previous = signal.signal(signal.SIGHUP, writer.request_reopen)
    try:
        writer.alert({"kind": "new_geo", "severity": "notice", "ts": 1.0, "title": "one", "id": "1-0"})
        writer.flush()
        path.rename(tmp_path / "eve.json.1")  # what logrotate does
        os.kill(os.getpid(), signal.SIGHUP)
        writer.maybe_reopen()
        writer.alert({"kind": "new_geo", "severity": "notice", "ts": 2.0, "title": "two", "id": "2-0"})
        writer.close()
    finally:
        signal.signal(signal.SIGHUP, previous)
    old = [json.loads(x) for x in (tmp_path / "eve.json.1").read_text().splitlines()]
    new = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["alert"]["signature"] for e in old] == ["one"]
    assert [e["alert"]["signature"] for e in new] == ["two"]


def test_flow_line_template_matches_the_generic_path(tmp_path: Path) -> None:
    """The templated flow event (hot path) says exactly what the map + json path says."""
    from shared.flowevents import FIELDS

    def row(**kw):
        base = dict(ev="end", fid=7, ts=1700000010.5, proto=6, ipv=4, src="10.0.0.1", sport=40000,
                    dst="93.184.216.34", dport=443, outbound=False, first=1700000000.25, last=1700000009.75,
                    pkts_out=5, bytes_out=600, pkts_in=4, bytes_in=4000, d_pkts_out=0, d_bytes_out=0,
                    d_pkts_in=0, d_bytes_in=0, state="CLOSED", name="", name_src="",
                    app={"tls.sni": "example.com"}, reason="fin", initial_rtt=0.0123,
                    retransmissions=1, out_of_order=0)  # fmt: skip
        base.update(kw)
        return tuple(base[f] for f in FIELDS)

    for r in (row(), row(proto=17, state="", app={}, reason="idle", src="2001:db8::1", dst="2001:db8::2")):
        fast, slow = EveWriter(str(tmp_path / "fast.json")), EveWriter(str(tmp_path / "slow.json"))
        fast.observe(r, None)
        slow._flow_line = lambda *_a: False  # force the generic path
        slow.observe(r, None)
        fast.close()
        slow.close()
        f = [json.loads(x) for x in (tmp_path / "fast.json").read_text().splitlines()]
        s = [json.loads(x) for x in (tmp_path / "slow.json").read_text().splitlines()]
        assert f == s and f[-1]["event_type"] == "flow"
        assert not list(VALIDATOR.iter_errors(f[-1]))
        (tmp_path / "fast.json").unlink()
        (tmp_path / "slow.json").unlink()
    bad = EveWriter(str(tmp_path / "bad.json"))
    assert not bad._flow_line(row(src='1.2.3.4"x'), [1, "1:x", set()])  # anything odd: generic path
