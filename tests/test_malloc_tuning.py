"""shared/malloc_tuning: frame-sized blocks come from the heap, not from a mapping of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# mallinfo2's hblks: blocks glibc serves with a mapping of their own, counted while a 2 MB
# block is alive
PROBE = r"""
import ctypes, sys
from shared.malloc_tuning import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tuned = tune_malloc() if sys.argv[1] == "tune" else None
before = libc.mallinfo2().hblks
block = bytearray(2 << 20)
print(tuned, libc.mallinfo2().hblks - before)
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_a_tuned_process_keeps_a_2mb_block_in_the_heap() -> None:
    assert probe("plain") == ("None", 1)  # glibc's default: a mapping of its own
    assert probe("tune") == ("True", 0)


def test_the_operators_malloc_settings_win() -> None:
    assert probe("tune", GLIBC_TUNABLES="glibc.malloc.check=0") == ("False", 1)
    assert probe("tune", MALLOC_ARENA_MAX="2") == ("False", 1)


def test_every_service_tunes_malloc_at_start(tmp_path: Path) -> None:
    """service_args (every service's start, under any launcher) tunes it."""
    from shared.config import PipelineConfig

    cfg = PipelineConfig().save(tmp_path / "pipeline.json")
    start = PROBE.replace(
        'tuned = tune_malloc() if sys.argv[1] == "tune" else None',
        "from shared.service import service_args; service_args('observer', argv=['--config', sys.argv[2]]); tuned = 'args'",
    )
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", start, "x", str(cfg)], cwd=ROOT, env=clean, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["args", "0"]
