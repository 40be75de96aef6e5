"""Clear errors (issue 10): files that are not captures say so, and packet times past 2038 print right."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import dpkt
import pytest

from tests.pipeline_helpers import pktscope, read_summary, tcp_session, write_pcap

Y2100 = 4102444800.5  # 2100-01-01 00:00:00.5 UTC: past 2038-01-19 (signed 32-bit seconds) and 2106 not


def _not_captures(tmp: Path) -> dict[str, Path]:
    files = {"empty": tmp / "empty.pcap", "random": tmp / "random.pcap", "v9": tmp / "v9.pcap"}
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(b"\x7fELF" + os.urandom(60))  # random bytes behind a start no capture has
    files["v9"].write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 9, 4, 0, 0, 65535, 1) + b"\x00" * 32)
    files["short"] = tmp / "short.pcap"
    files["short"].write_bytes(struct.pack("<IHH", 0xA1B2C3D4, 2, 4))
    return files


@pytest.mark.parametrize("kind", ["empty", "random", "v9", "short"])
def test_a_file_that_is_not_a_capture_is_named_so_by_run_and_read(short_tmp, kind):
    path = _not_captures(short_tmp)[kind]
    run = pktscope("run", "--read", str(path), "--run-dir", str(short_tmp / "run"), check=False)
    read = pktscope("read", str(path), check=False)
    for proc in (run, read):
        assert proc.returncode != 0
        assert "not a pcap or pcapng file" in proc.stderr
        assert "No such device" not in proc.stderr and "Traceback" not in proc.stderr
    if kind == "v9":
        assert "pcap version 9.4" in run.stderr
    assert not (short_tmp / "run" / "supervisord.pid").exists()  # nothing was started


def _pcapng(path: Path, packets: list) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, data in packets:
            w.writepkt(data, ts=ts)
    return path


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_packet_times_past_2038_print_as_they_are(short_tmp, fmt):
    packets = tcp_session("10.0.0.1", "198.51.100.1", 40000, 443, Y2100)
    path = (write_pcap if fmt == "pcap" else _pcapng)(short_tmp / f"y2100.{fmt}", packets)
    first = json.loads(pktscope("read", "--json", str(path)).stdout.splitlines()[0])
    assert first["frame"]["time_epoch"] == pytest.approx(Y2100, abs=1e-3)
    run_dir = short_tmp / "run"
    run = pktscope(
        "run", "--read", str(path), "--run-dir", str(run_dir), "--state-dir", str(short_tmp / "state"),
        "--learning", "0", "--json",
    )  # fmt: skip
    assert read_summary(run)["alerts"] == 2
    listed = pktscope("alerts", "list", "--run-dir", str(run_dir), "--json").stdout.splitlines()
    assert {json.loads(line)["ts"] // 1 for line in listed} == {Y2100 // 1}
    text = pktscope("alerts", "list", "--run-dir", str(run_dir)).stdout
    assert "2100-01-01" in text or "2099-12-31" in text  # local time of the test machine
    assert "1963" not in text and "1901" not in text
    status = pktscope("status", "--run-dir", str(run_dir)).stdout
    assert "learning window ends 2100-01-01 00:00:00 UTC" in status
