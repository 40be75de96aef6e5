"""tshark as the oracle: run it on capture files and parse what it says (tests only).

Every helper runs tshark once per file and returns plain Python values; results are cached per
(file, arguments) so several tests can ask about one capture without running tshark again.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed: run scripts/setup")


def run_tshark(*args: str, timeout: float = 300) -> str:
    """tshark's stdout; a failure is a test error with tshark's own message."""
    proc = subprocess.run(
        [TSHARK or "tshark", "-n", *args], capture_output=True, text=True, errors="replace", timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"tshark {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def run_tool(*args: str, timeout: float = 300) -> str:
    """Another Wireshark tool (mergecap, editcap), installed with tshark."""
    proc = subprocess.run(list(args), capture_output=True, text=True, errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])}... failed: {proc.stderr.strip()}")
    return proc.stdout


@functools.cache
def fields(path: str, names: tuple[str, ...], display_filter: str = "") -> list[list[str]]:
    """One row of the named fields per packet (matching ``display_filter``); "" when absent."""
    args = ["-r", path, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=l"]
    if display_filter:
        args += ["-Y", display_filter]
    for name in names:
        args += ["-e", name]
    out = run_tshark(*args)
    return [line.split("\t") for line in out.splitlines()]


def frames(path: str | Path) -> list[tuple[str, int, int, int, str]]:
    """Every packet as tshark reads it: (epoch time text, len, cap_len, encapsulation, hex bytes)."""
    out = run_tshark("-r", str(path), "-T", "ek", "-x", "-J", "frame")
    rows = []
    for line in out.splitlines():
        doc = json.loads(line)
        layers = doc.get("layers")
        if layers is None:
            continue
        frame = layers["frame"]
        rows.append(
            (
                frame["frame_frame_time_epoch"],
                int(frame["frame_frame_len"]),
                int(frame["frame_frame_cap_len"]),
                int(frame["frame_frame_encap_type"]),
                layers.get("frame_raw", ""),
            )
        )
    return rows
