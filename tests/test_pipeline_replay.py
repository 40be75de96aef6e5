"""The whole pipeline under supervisord on capture files: counts, determinism, alerts, errors."""

from __future__ import annotations

import json

import pcap
import pytest

from tests.conftest import BENCH_PCAP
from tests.pipeline_helpers import pktscope, read_summary, stream_order, tcp_session, write_pcap

BENCH_PACKETS = 183_388


def _replay(tmp, decoders: int, capture=BENCH_PCAP, *extra: str):
    run_dir = tmp / f"run{decoders}"
    flow_log = tmp / f"flows{decoders}.jsonl"
    proc = pktscope(
        "run",
        "--read",
        str(capture),
        "--decoders",
        str(decoders),
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(tmp / f"state{decoders}"),
        "--learning",
        "0",
        "--flow-log",
        str(flow_log),
        "--json",
        *extra,
        timeout=600,
    )
    return read_summary(proc), flow_log


def _flow_summary(flow_log) -> list[tuple]:
    """Every ended flow's identity and counters, order-free (fid and timing of emission excluded)."""
    rows = []
    for line in flow_log.read_text().splitlines():
        ev = json.loads(line)
        rows.append(
            (
                ev["proto"],
                ev["src"],
                ev["sport"],
                ev["dst"],
                ev["dport"],
                ev["first"],
                ev["last"],
                ev["pkts_out"],
                ev["bytes_out"],
                ev["pkts_in"],
                ev["bytes_in"],
                ev["reason"],
                ev["state"],
                ev["name"],  # DNS names "as of" each event: the same however decoders interleave
                ev["name_src"],
            )
        )
    return sorted(rows)


@pytest.mark.slow
def test_bench_capture_every_packet_accounted_and_flows_identical_with_1_and_3_decoders(short_tmp):
    one, log1 = _replay(short_tmp, 1)
    three, log3 = _replay(short_tmp, 3)
    for s in (one, three):
        assert s["packets"] == BENCH_PACKETS
        assert s["decoded"] + s["malformed"] == BENCH_PACKETS
        assert s["capture_error"] == ""
        assert s["drops"]["capture"] == 0
    assert len(three["per_decoder"]) == 3
    assert all(d["packets_in"] > 0 for d in three["per_decoder"].values())
    flows1, flows3 = _flow_summary(log1), _flow_summary(log3)
    assert len(flows1) == one["flows"] > 10_000
    assert flows1 == flows3
    assert one["malformed"] == three["malformed"]
    # status on the stopped pipeline: a readable learning window and the app-layer trouble counts
    status = pktscope("status", "--run-dir", str(short_tmp / "run3")).stdout
    assert "baseline: detecting (learning window ends 2023-11-14 22:13:20 UTC)" in status
    assert "application layers: reasm_bound_gap_skips " in status
    # and the same alerts, down to which flow raised each
    alerts1, alerts3 = _alerts(short_tmp / "run1"), _alerts(short_tmp / "run3")
    assert len(alerts1) == one["alerts"] > 900
    assert alerts1 == alerts3
    assert one["late_events"] == three["late_events"] == 0


def _alerts(run_dir) -> list[tuple]:
    """Every alert of a finished run, without its stream id, sorted."""
    listed = pktscope("alerts", "list", "--json", "--count", "100000", "--run-dir", str(run_dir))
    alerts = sorted(
        (json.loads(line) for line in listed.stdout.splitlines() if line.strip()),
        key=lambda a: stream_order(a["id"]),
    )
    return sorted(
        (a["kind"], a["entity"], a["title"], a["ts"], json.dumps(a["detail"], sort_keys=True)) for a in alerts
    )



def test_replay_raises_new_process_egress_once_per_host_and_lists_it(short_tmp):
    t0 = 1_700_000_000.0
    packets = tcp_session("192.168.7.10", "93.184.216.34", 40001, 443, t0)
    packets += tcp_session("192.168.7.10", "93.184.216.35", 40002, 443, t0 + 1)  # same host again: no alert
    packets += tcp_session("192.168.7.11", "93.184.216.34", 40003, 80, t0 + 2)  # another host: alert
    packets += tcp_session("93.184.216.34", "192.168.7.10", 50000, 22, t0 + 3)  # inbound: no alert
    capture = write_pcap(short_tmp / "egress.pcap", packets)
    summary, flow_log = _replay(short_tmp, 2, capture)
    assert summary["packets"] == len(packets)
    assert summary["flows"] == 4
    # 2 first-ever egress alerts, and 3 new destinations (labelled by IP: no name, no AS data)
    assert summary["alerts"] == 5
    # The pipeline has stopped; `alerts list` serves the private Redis's saved data.
    listed = pktscope("alerts", "list", "--json", "--run-dir", str(short_tmp / "run2"))
    alerts = [json.loads(line) for line in listed.stdout.splitlines()]
    egress = [a for a in alerts if a["kind"] == "new_process_egress"]
    assert sorted(a["entity"] for a in egress) == ["host:192.168.7.10", "host:192.168.7.11"]
    dests = sorted((a["entity"], a["destination"]) for a in alerts if a["kind"] == "new_process_dest")
    assert [e for e, _ in dests] == ["host:192.168.7.10", "host:192.168.7.10", "host:192.168.7.11"]
    for a in alerts:
        assert set(a) >= {"id", "kind", "severity", "ts", "entity", "destination", "title", "detail"}


def test_truncated_capture_yields_what_it_held_and_an_error(short_tmp):
    data = BENCH_PCAP.read_bytes()[:200_000]
    cut = short_tmp / "cut.pcap"
    cut.write_bytes(data)
    held = sum(1 for _ in pcap.pcap(str(cut)))
    proc = pktscope(
        "run",
        "--read",
        str(cut),
        "--decoders",
        "1",
        "--run-dir",
        str(short_tmp / "rt"),
        "--state-dir",
        str(short_tmp / "st"),
        "--learning",
        "0",
        "--json",
        check=False,
    )
    assert proc.returncode == 1
    summary = read_summary(proc)
    assert summary["packets"] == held > 0
    assert summary["decoded"] + summary["malformed"] == held
    assert "truncated" in summary["capture_error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--read", "/nonexistent.pcap"], "capture file not found"),
        (["--read", str(BENCH_PCAP.parent)], "is a directory; give one pcap or pcapng file in it"),
        (["--read", "x.pcap", "--interface", "lo"], "not allowed with argument"),
        (["--read", str(BENCH_PCAP), "--decoders", "0"], "--decoders must be >= 1"),
        (["--read", str(BENCH_PCAP), "--local-net", "10.0.0.300/8"], "write it like"),
        (["--interface", "nosuchif0"], "cannot capture on interface"),
        (["--interface", "lo", "--bpf", "tcp porrt 80"], "bad BPF filter 'tcp porrt 80'"),
    ],
)
def test_bad_flags_exit_nonzero_and_say_how_to_fix(short_tmp, args, message):
    proc = pktscope(
        "run",
        *args,
        "--run-dir",
        str(short_tmp / "r"),
        "--state-dir",
        str(short_tmp / "s"),
        check=False,
        timeout=60,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
