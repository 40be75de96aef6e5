"""`pktscope capture` on lo while the test makes traffic, and `pktscope interfaces`."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import ROOT

from services.cli.capfile import CaptureReader
from services.cli.read import read_capture

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _capture_while_sending(port: int, *args: str) -> subprocess.CompletedProcess:
    """Run `pktscope capture -i lo --bpf 'udp port PORT' ARGS` while datagrams go to PORT."""
    cmd = [
        sys.executable,
        "-m",
        "services.cli.main",
        "capture",
        "-i",
        "lo",
        "--bpf",
        f"udp port {port}",
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            n = 0
            while not stop.wait(0.02):
                s.sendto(b"pktscope-live-%d" % n, ("127.0.0.1", port))
                n += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        sender.join(5)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_capture_lo_json_prints_20_packets():
    port = _free_udp_port()
    done = _capture_while_sending(port, "-c", "20", "--json")
    assert done.returncode == 0, done.stderr
    packets = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(packets) == 20
    assert all(p["udp"]["dstport"] == port and p["ip"]["dst"] == "127.0.0.1" for p in packets)
    assert [p["frame"]["number"] for p in packets] == sorted(p["frame"]["number"] for p in packets)
    assert all(p["udp"]["stream"] >= 0 for p in packets)
    assert "20 packets shown" in done.stderr


def test_capture_lo_writes_a_file_that_read_decodes(tmp_path):
    port = _free_udp_port()
    out = tmp_path / "live.pcapng"
    done = _capture_while_sending(port, "-c", "10", "-w", str(out), "-Y", "udp.length > 8")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 10  # -w on capture still shows the packets
    reader = CaptureReader(str(out))
    records = list(reader)
    assert len(records) == 10 and reader.interfaces[0].name == "lo"
    text = io.StringIO()
    matched, error = read_capture(str(out), text, as_json=True)
    assert (matched, error) == (10, None)
    decoded = [json.loads(line) for line in text.getvalue().splitlines()]
    assert all(d["udp"]["dstport"] == port for d in decoded)
    stamps = [d["frame"]["time_epoch"] for d in decoded]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] > 0


def test_capture_bad_arguments_say_how_to_fix():
    run = [sys.executable, "-m", "services.cli.main", "capture"]
    bad_iface = subprocess.run(
        [*run, "-i", "no-such-if0", "-c", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (
        bad_iface.returncode == 1
        and "pktscope interfaces" in bad_iface.stderr
        or "ip link" in bad_iface.stderr
    )
    bad_bpf = subprocess.run(
        [*run, "-i", "lo", "--bpf", "udp port"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad_bpf.returncode == 2 and "BPF" in bad_bpf.stderr
    bad_filter = subprocess.run(
        [*run, "-i", "lo", "-Y", "udp.port =="], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad_filter.returncode == 2 and "display filter" in bad_filter.stderr


def test_interfaces_lists_lo_with_its_address():
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "interfaces", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert "lo" in rows and rows["lo"]["up"] is True
    assert {"family": "ipv4", "address": "127.0.0.1"} in rows["lo"]["addresses"]
    text = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "interfaces"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert any(
        line.split(". ", 1)[1].startswith("lo") and "127.0.0.1" in line for line in text.stdout.splitlines()
    )
