"""Commands find a pipeline started by systemd units through its installed config
(services/cli/common.py: $PKTSCOPE_CONFIG, else /etc/pktscope/pipeline.json)."""

from __future__ import annotations

import argparse
import os

import pytest

from services.cli.common import CliError, load_pipeline, resolve_redis
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


def test_another_redis_url_is_not_read_with_the_default_run_directorys_pipeline(tmp_path, monkeypatch):
    """`pktscope status --redis-url POOL` on a host that also ran a pipeline of its own: the local
    pipeline's run id and prefix must not filter what the other Redis holds."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    own = PipelineConfig(read_path="x.pcap", run_dir=str(run_dir), redis_prefix="local")
    own.save(run_dir / "pipeline.json")
    monkeypatch.setenv("PKTSCOPE_RUN_DIR", str(run_dir))
    monkeypatch.delenv("PKTSCOPE_CONFIG", raising=False)

    other = argparse.Namespace(redis_url="redis://pool.example:6379/0", redis_prefix=None, redis_cluster=False)
    resolve_redis(other)
    assert other.pipeline is None and other.redis_prefix == "pktscope"

    same = argparse.Namespace(redis_url=own.effective_redis_url, redis_prefix=None, redis_cluster=False)
    resolve_redis(same)
    assert same.pipeline is not None and same.pipeline.run_id == own.run_id and same.redis_prefix == "local"

    # a run directory named on the command line is taken at its word, whatever the URL
    chosen = argparse.Namespace(
        run_dir=run_dir, redis_url="redis://pool.example:6379/0", redis_prefix=None, redis_cluster=False
    )
    resolve_redis(chosen)
    assert chosen.pipeline is not None and chosen.redis_prefix == "local"
