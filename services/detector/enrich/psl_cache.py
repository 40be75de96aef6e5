"""The parsed Public Suffix List, kept beside the bytecode so that a start-up does not parse it.

``PublicSuffixList()`` reads ~10k rules and IDNA-encodes each: 36 ms of every `pktscope run`'s
start-up, in the launcher's zygote, before it can fork the first service (it preloads
services/detector/enrich/domains.py for the detector and the observer). The parsed object's
state (a frozenset of rules, two small ints) loads from a ``marshal`` file in 1.5 ms.

``scripts/setup`` writes the file (``python -m services.detector.enrich.psl_cache``), as it
writes the project's bytecode; nothing writes it at run time. Its name carries a digest of the
installed ``publicsuffixlist`` (its code and its list file: path, size, modification time) and
of the Python version, so another list, another release of the package or another Python finds
no file and parses the list as before. ``marshal`` only builds data here (the loaded value is
checked to be a map of plain values), and the file sits in the project's own ``__pycache__``,
trusted as the bytecode beside it is.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from pathlib import Path

import publicsuffixlist
from publicsuffixlist import PublicSuffixList

CACHE_DIR = Path(__file__).resolve().parent / "__pycache__"
_PLAIN = (bool, int, str, frozenset)


def cache_path() -> Path | None:
    """Where the cache of the installed list is (None when the package's files cannot be read)."""
    code = Path(publicsuffixlist.__file__)
    try:
        facts = [f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in ((p, p.stat()) for p in (code, Path(publicsuffixlist.PSLFILE)))]
    except (OSError, AttributeError):
        return None
    facts.append(sys.version)
    digest = hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]
    return CACHE_DIR / f"psl-{digest}.marshal"


def load() -> PublicSuffixList:
    """The installed list: from its cache when there is one, else parsed."""
    state = _read(cache_path())
    if state is None:
        return PublicSuffixList()
    psl = PublicSuffixList.__new__(PublicSuffixList)
    psl.__dict__.update(state)
    return psl


def _read(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        state = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(state, dict) or not state:
        return None
    if not all(isinstance(k, str) and isinstance(v, _PLAIN) for k, v in state.items()):
        return None
    return state


def write() -> Path | None:
    """Parse the installed list and write its cache (atomically); the path, or None when it cannot."""
    path = cache_path()
    if path is None:
        return None
    state = vars(PublicSuffixList())
    if not all(isinstance(v, _PLAIN) for v in state.values()):
        return None  # a release that keeps other kinds of state: parsed at each start instead
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(marshal.dumps(state))
    os.replace(tmp, path)
    for old in path.parent.glob("psl-*.marshal"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


if __name__ == "__main__":
    written = write()
    if written is None:
        print("psl_cache: the Public Suffix List cannot be cached here; it is parsed at each start", file=sys.stderr)
    sys.exit(0)
