"""tshark as the display-filter oracle: the frame numbers each filter keeps, many filters a run.

One `tshark -Y F` per (capture, filter) pair costs a tshark start-up each (0.2-0.5 s; 150
filters x 317 captures would be hours). Instead one tshark run per capture loads a small Lua
script that registers one tap listener per filter (``Listener.new(nil, F)``: the listener's
``packet`` is called for exactly the frames ``-Y F`` keeps, in the same single pass) and writes
"filter-index frame-number" lines. A filter tshark rejects is recorded as an error text.

Results are cached as JSON under ``cache_dir()`` (``PKTSCOPE_TSHARK_CACHE`` or
``.cache/tshark`` in the repository), one file per (tshark version, capture path, size,
mtime), holding each filter's answer: a first run fills it, later runs only ask tshark about
filters not yet in it. Captures are run in parallel, one tshark per core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LUA = r"""
local out = assert(io.open(os.getenv("PKTSCOPE_ORACLE_OUT"), "w"))
local i = 0
for flt in io.lines(os.getenv("PKTSCOPE_ORACLE_FILTERS")) do
  i = i + 1
  local idx = i
  local ok, l = pcall(Listener.new, nil, flt)
  if ok then
    function l.packet(pinfo) out:write(idx, " ", pinfo.number, "\n") end
  else
    out:write(idx, " E ", (tostring(l):gsub("\n", " ")), "\n")
  end
end
local last = Listener.new(nil, nil)
function last.packet(pinfo, tvb) out:write("L ", pinfo.number, " ", tvb:reported_len(), " ", tvb:len(), "\n") end
function last.draw() out:flush() end
"""

Answer = list[int] | str  # frame numbers, or tshark's error text for a filter it rejects
LENGTHS = "\0lengths"  # cache key of [frame number, frame.len, frame.cap_len] rows


def available() -> bool:
    return shutil.which("tshark") is not None


@lru_cache(maxsize=1)
def version() -> str:
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def cache_dir() -> Path:
    return Path(os.environ.get("PKTSCOPE_TSHARK_CACHE", ROOT / ".cache" / "tshark"))


def _cache_file(capture: Path) -> Path:
    st = capture.stat()
    key = f"{version()}\0{capture.resolve()}\0{st.st_size}\0{int(st.st_mtime)}"
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def _run_tshark(capture: Path, filters: list[str]) -> dict[str, Answer]:
    """Ask tshark about ``filters`` on ``capture`` in one run."""
    with tempfile.TemporaryDirectory(prefix="pktscope-oracle-") as tmp:
        script = Path(tmp) / "oracle.lua"
        script.write_text(LUA)
        flist = Path(tmp) / "filters.txt"
        flist.write_text("".join(f + "\n" for f in filters))
        out = Path(tmp) / "out.txt"
        env = dict(os.environ, PKTSCOPE_ORACLE_OUT=str(out), PKTSCOPE_ORACLE_FILTERS=str(flist))
        proc = subprocess.run(
            ["tshark", "-n", "-q", "-r", str(capture), "-X", f"lua_script:{script}"],
            capture_output=True,
            text=True,
            env=env,
        )
        if not out.exists():
            raise RuntimeError(f"tshark on {capture} gave no answer: {proc.stderr[-2000:]}")
        frames: dict[int, list[int]] = {i: [] for i in range(1, len(filters) + 1)}
        errors: dict[int, str] = {}
        lengths: list[list[int]] = []
        for line in out.read_text().splitlines():
            idx_text, _, rest = line.partition(" ")
            if idx_text == "L":  # frame number, frame.len, frame.cap_len of every frame
                lengths.append([int(x) for x in rest.split()])
                continue
            idx = int(idx_text)
            if rest.startswith("E "):
                errors[idx] = rest[2:]
            else:
                frames[idx].append(int(rest))
    answers: dict = {f: errors.get(i, frames[i]) for i, f in enumerate(filters, 1)}
    answers[LENGTHS] = lengths
    return answers


def matches(capture: Path, filters: list[str]) -> dict[str, Answer]:
    """tshark's answer for every filter on ``capture``, from the cache where it has them."""
    path = _cache_file(capture)
    cached: dict[str, Answer] = {}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
    missing = [f for f in dict.fromkeys(filters) if f not in cached]
    if missing or LENGTHS not in cached:
        cached.update(_run_tshark(capture, missing))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(path)
    return {f: cached[f] for f in filters}


def frame_lengths(capture: Path) -> list[list[int]]:
    """tshark's [frame number, frame.len, frame.cap_len] of every frame (from the same cached run)."""
    matches(capture, [])
    return json.loads(_cache_file(capture).read_text())[LENGTHS]


def matches_many(
    captures: list[Path], filters: list[str], workers: int | None = None
) -> dict[Path, dict[str, Answer]]:
    """``matches`` for every capture, several tshark processes at once (largest captures first)."""
    order = sorted(captures, key=lambda p: -p.stat().st_size)
    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        answers = dict(zip(order, pool.map(lambda c: matches(c, filters), order), strict=True))
    return {c: answers[c] for c in captures}
