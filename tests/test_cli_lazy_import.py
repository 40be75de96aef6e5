"""`pktscope COMMAND` imports only that command's module (start-up, issue 14), and the shortcut
names the right module for every command the full parser knows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_maps_to_the_module_that_defines_it():
    full = main.build_parser()
    commands = next(a for a in full._actions if a.dest == "command").choices
    assert {"run", "read", "interfaces", "version"} <= set(commands)
    for command in commands:
        module = main.module_for([command, "--x"])
        assert module is not None, command
        alone = main.build_parser(module)
        assert command in next(a for a in alone._actions if a.dest == "command").choices, (command, module)
    assert main.module_for(["--help"]) is None and main.module_for(["nonsense"]) is None


def test_run_does_not_import_the_other_commands():
    code = (
        "import sys; from services.cli import main; main.build_parser(main.module_for(['run']));"
        "print(sorted(m for m in sys.modules if m.startswith('services.cli.') and m != 'services.cli.main'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    assert "services.cli.run" in loaded
    for other in ("services.cli.inspect", "services.cli.read", "services.cli.diff", "services.cli.baseline"):
        assert f"'{other}'" not in loaded, other


def test_version_and_help_still_work():
    v = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "version"], cwd=ROOT, capture_output=True, text=True
    )
    assert v.returncode == 0 and "hot path:" in v.stdout
    h = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert h.returncode == 0 and "inspect" in h.stdout and "run" in h.stdout
