"""The compiled twin of a pure module, for tests that compare the two (shared/compiled.py)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from shared import compiled


def compiled_twin(pure: str) -> ModuleType:
    """Pure module ``pure``'s twin; skips under PKTSCOPE_PURE=1, fails when it is not built or stale."""
    if compiled.forced_pure():
        pytest.skip("PKTSCOPE_PURE=1: no compiled path to compare")
    mod = importlib.import_module(pure)
    assert mod.COMPILED, f"{compiled.TWINS[pure]} not built or stale ({compiled.STATUS}): run scripts/setup"
    return importlib.import_module(compiled.TWINS[pure])
