"""systemd, supervisord and compose start the same programs for every role (issue 15, acceptance 5).

Here the units `pktscope systemd` writes are checked offline with `systemd-analyze verify` and
parsed with configparser (tests/test_systemd_boot.py starts them under a real systemd), and every
ExecStart is run through the real argparse parser of ``python -m services.<name>``. The compose
files are checked against the same program list (services/cli/programs.py) without docker.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.cli import main as cli_main
from services.cli.programs import programs
from services.cli.run import build_config
from services.cli.supervisor import render_config
from services.cli.systemd import TARGETS, write_units
from shared.config import PipelineConfig
from shared.curve import create_keys
from shared.service import service_parser
from tests.conftest import ROOT

COMMITTED = ROOT / "compose" / "systemd"
EXAMPLE_PYTHON = "/opt/pktscope/.venv/bin/python"
SHARDS = ["--decoders", "2", "--flowtrackers", "2", "--detectors", "2"]


def role_argv(role: str, keys: Path) -> list[str]:
    """The `pktscope systemd` flags of each role's example (compose/systemd was written with these)."""
    if role == "all":
        return ["--interface", "eth0", *SHARDS]
    if role == "sensor":
        return ["--role", "sensor", "--interface", "eth0", "--pool", "tcp://10.0.0.9:5700",
                "--sensor-name", "web-1", "--curve-keys", str(keys), *SHARDS]  # fmt: skip
    return ["--role", "pool", "--listen", "tcp://0.0.0.0:5700", "--curve-keys", str(keys), "--detectors", "2"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    create_keys(d, "web-1")
    return d


def config(argv: list[str], command: str = "systemd") -> PipelineConfig:
    args = cli_main.build_parser().parse_args([command, *argv])
    return build_config(args)


def generate(role: str, keys: Path, out: Path, python: str) -> PipelineConfig:
    cfg = config(role_argv(role, keys))
    write_units(cfg, out, python, "/etc/pktscope")
    return cfg


def read_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # keys are case-sensitive in systemd
    cp.read_string(path.read_text())
    return cp


def wanted(target: Path) -> list[str]:
    return read_unit(target)["Unit"]["Wants"].split()


@pytest.mark.parametrize("role", ["all", "sensor", "pool"])
def test_units_start_exactly_the_programs_supervisord_runs(role, keys, tmp_path):
    cfg = generate(role, keys, tmp_path, sys.executable)
    progs = programs(cfg)
    # supervisord: the same program names, in a config rendered from the same PipelineConfig
    conf = render_config(cfg, sys.executable)
    assert set(re.findall(r"^\[program:(\w+)\]", conf, re.M)) == {p.name for p in progs}
    for p in progs:
        if p.indexed:
            assert re.search(rf"\[program:{p.name}\][^\[]*numprocs={p.instances}\n", conf)
    # systemd: the role's target wants every instance, and nothing else
    expected = [f"pktscope-{p.name}@{i}.service" for p in progs if p.indexed for i in range(p.instances)]
    expected += [f"pktscope-{p.name}.service" for p in progs if not p.indexed]
    assert sorted(wanted(tmp_path / TARGETS[role])) == sorted(expected)
    assert cfg.role == role
    if role != "pool":
        assert cfg.flowtrackers == 2 and cfg.decoders == 2
    if role != "sensor":
        assert {p.name: p.instances for p in progs}["detector"] == 2
    assert json.loads((tmp_path / "pipeline.json").read_text())["role"] == role


@pytest.mark.parametrize("role", ["all", "sensor", "pool"])
def test_every_execstart_exists_and_parses_with_the_services_own_parser(role, keys, tmp_path):
    cfg = generate(role, keys, tmp_path, sys.executable)
    for unit in tmp_path.glob("*.service"):
        cp = read_unit(unit)
        assert cp["Service"]["Restart"] in ("on-failure", "always")
        targets = cp["Install"]["WantedBy"].split()
        assert TARGETS[role] in targets and cp["Unit"]["PartOf"].split() == targets
        argv = shlex.split(cp["Service"]["ExecStart"].replace("%i", "0"))
        assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK), argv[0]
        if unit.name == "pktscope-redis.service":
            assert "--unixsocket" in argv and f"{cfg.run_dir}/redis.sock" in argv
            continue
        assert argv[1] == "-m" and argv[2].startswith("services.")
        name = argv[2].split(".", 1)[1]
        indexed = unit.name.endswith("@.service")
        args = service_parser(name, with_index=indexed).parse_args(argv[3:])
        assert args.config == "/etc/pktscope/pipeline.json"
        assert (args.index == 0) if indexed else not hasattr(args, "index")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("role", ["all", "sensor", "pool"])
def test_systemd_analyze_verifies_the_units(role, keys, tmp_path):
    generate(role, keys, tmp_path, sys.executable)
    # a template is verified through an instance of it
    units = [str(p) for p in tmp_path.glob("*.service") if not p.name.endswith("@.service")]
    for tmpl in tmp_path.glob("*@.service"):
        inst = tmp_path / tmpl.name.replace("@.service", "@0.service")
        shutil.copy(tmpl, inst)
        units.append(str(inst))
    units.append(str(tmp_path / TARGETS[role]))
    got = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, timeout=120
    )
    if got.returncode != 0 and "Failed to" in got.stderr and "pktscope" not in got.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {got.stderr.strip()[:200]}")
    assert got.returncode == 0, got.stderr


def test_the_committed_units_are_what_the_generator_writes(keys, tmp_path):
    """compose/systemd is the generator's output for the three roles' examples: they cannot drift."""
    if shutil.which("redis-server") != "/usr/bin/redis-server":
        pytest.skip("the example was written where redis-server is /usr/bin/redis-server")
    for role in ("all", "sensor", "pool"):
        generate(role, keys, tmp_path, EXAMPLE_PYTHON)
    made = {p.name for p in tmp_path.iterdir() if p.suffix in (".service", ".target")}
    assert made == {p.name for p in COMMITTED.iterdir()}
    for name in made:
        assert (COMMITTED / name).read_text() == (tmp_path / name).read_text(), name


# --- compose ------------------------------------------------------------------------------------
def compose_instances(path: Path) -> dict[str, list]:
    """Per service module, the --index of each container (``auto`` replicas counted out)."""
    out: dict[str, list] = {}
    for svc in yaml.safe_load(path.read_text())["services"].values():
        cmd = [str(a) for a in svc.get("command") or []]
        if cmd[:2] != ["python", "-m"]:
            continue
        name = cmd[2].split(".", 1)[1]
        idx = cmd[cmd.index("--index") + 1] if "--index" in cmd else None
        if idx == "auto":
            out.setdefault(name, []).extend(range(svc["deploy"]["replicas"]))
        else:
            out.setdefault(name, []).append(None if idx is None else int(idx))
    return out


@pytest.mark.parametrize(
    "compose,pipeline",
    [
        ("compose/docker-compose.yml", "compose/pipeline.example.json"),
        ("compose/cluster/docker-compose.yml", "compose/cluster/pipeline.cluster.json"),
    ],
)
def test_compose_runs_every_program_of_its_config_with_sharded_stages(compose, pipeline):
    cfg = PipelineConfig.load(ROOT / pipeline)
    got = compose_instances(ROOT / compose)
    assert cfg.flowtrackers > 1 and cfg.detectors > 1 and cfg.decoders > 1
    for p in programs(cfg):
        if p.name == "redis":
            continue  # compose runs Redis as its own image
        if p.indexed:
            assert sorted(got.get(p.name, [])) == list(range(p.instances)), p.name
        else:
            assert got.get(p.name) == [None], p.name
    assert set(got) == {p.name for p in programs(cfg)} - {"redis"}
