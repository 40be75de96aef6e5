"""Commands find a pipeline started by systemd units through its installed config
(services/cli/common.py: $PKTSCOPE_CONFIG, else /etc/pktscope/pipeline.json)."""

from __future__ import annotations

import os

import pytest

from services.cli.common import CliError, load_pipeline
from shared.config import PipelineConfig


def installed(tmp_path, run_dir, mode: int = 0o644):
    path = tmp_path / "etc" / "pipeline.json"
    path.parent.mkdir()
    cfg = PipelineConfig(interface="eth0", run_dir=str(run_dir), redis_prefix="unitsprefix")
    path.write_text(cfg.to_json() + "\n")
    os.chmod(path, mode)
    return path


def test_the_installed_config_names_the_pipeline_of_its_run_directory(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("PKTSCOPE_CONFIG", str(installed(tmp_path, run_dir)))
    cfg = load_pipeline(run_dir)
    assert cfg is not None and cfg.redis_prefix == "unitsprefix"
    other = tmp_path / "other"
    other.mkdir()
    assert load_pipeline(other) is None  # another run directory: not that pipeline


def test_a_run_directory_with_its_own_config_wins(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    PipelineConfig(read_path="x.pcap", run_dir=str(run_dir), redis_prefix="own").save(run_dir / "pipeline.json")
    monkeypatch.setenv("PKTSCOPE_CONFIG", str(installed(tmp_path, run_dir)))
    assert load_pipeline(run_dir).redis_prefix == "own"


def test_an_installed_config_others_may_write_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("PKTSCOPE_CONFIG", str(installed(tmp_path, run_dir, mode=0o666)))
    with pytest.raises(CliError, match="not trusted"):
        load_pipeline(run_dir)
