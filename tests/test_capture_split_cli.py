"""`pktscope run --captures C`: bad values are refused with a fix, and supervisord runs C captures."""

from __future__ import annotations

import pytest

from services.cli.main import build_parser
from services.cli.run import build_config
from services.cli.supervisor import render_config
from tests.pipeline_helpers import pktscope


@pytest.mark.parametrize("value", ["0", "-1", "65"])
def test_a_bad_captures_value_exits_non_zero_and_says_how_to_fix_it(short_tmp, value):
    proc = pktscope(
        "run", "--interface", "lo", "--captures", value, "--run-dir", str(short_tmp / "r"), check=False
    )
    assert proc.returncode != 0
    assert f"--captures {value}" in proc.stderr
    assert "from 1 to 64" in proc.stderr and "--captures 2" in proc.stderr
    assert not (short_tmp / "r" / "supervisord.conf").exists()  # refused before anything started


def test_a_replay_with_several_captures_is_refused(short_tmp):
    pcap = short_tmp / "x.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(8) + b"\xff\xff\x00\x00\x01\x00\x00\x00")
    proc = pktscope("run", "--read", str(pcap), "--captures", "2", "--run-dir", str(short_tmp / "r"), check=False)
    assert proc.returncode != 0
    assert "--captures 1" in proc.stderr and "replay" in proc.stderr


def _cfg(tmp, *extra: str):
    args = build_parser("services.cli.run").parse_args(
        ["run", "--run-dir", str(tmp / "r"), "--state-dir", str(tmp / "s"), *extra]
    )
    return build_config(args)


def test_supervisord_runs_one_capture_per_index(short_tmp):
    cfg = _cfg(short_tmp, "--interface", "lo", "--captures", "3", "--attribution", "psutil")
    conf = render_config(cfg)
    assert cfg.captures == 3 and cfg.capture_names() == ["capture-0", "capture-1", "capture-2"]
    assert "process_name=capture-%(process_num)d\nnumprocs=3\n" in conf
    assert "services.capture --config" in conf and "--index %(process_num)d" in conf


def test_one_capture_keeps_its_plain_name(short_tmp):
    cfg = _cfg(short_tmp, "--interface", "lo", "--attribution", "psutil")
    assert cfg.captures == 1 and cfg.capture_names() == ["capture"]
    assert "process_name=capture\nnumprocs=1\n" in render_config(cfg)


def test_a_sensor_takes_captures(short_tmp):
    cfg = _cfg(
        short_tmp, "--interface", "lo", "--role", "sensor", "--pool", "tcp://127.0.0.1:5999",
        "--captures", "2", "--insecure-listen",
    )  # fmt: skip
    conf = render_config(cfg)
    assert cfg.role == "sensor" and cfg.captures == 2
    assert "[program:capture]" in conf and "numprocs=2" in conf
    assert "[program:detector]" not in conf
