"""glibc malloc told to keep large blocks in the heap, so that frame buffers are not mapped anew.

A service allocates and frees buffers of hundreds of KB to a few MB per frame (packed bodies,
msgpack output, ZeroMQ messages). glibc serves those above its mmap threshold with a fresh
mmap and returns them with munmap, and gives the top of the heap back once more than its trim
threshold is free: each frame's buffer then faults its pages in again. On the 5x bench capture
this was 141k page faults and 0.62 s of system CPU for the whole command; with the two
thresholds below, 71-75k faults and 0.41-0.44 s (``scripts/bench_processes`` prints both;
docs/benchmarks.md "2026-12-05 (2)"). Peak RSS grows a little where the heap
now keeps what it used to give back: capture 48 -> 52 MB on that capture, the others within 2 MB.

The heap keeps at most ``TRIM_THRESHOLD`` free bytes at its top: a long-running service's RSS
falls back to within that of what it uses after a burst.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20  # blocks this large or larger are still mapped on their own
TRIM_THRESHOLD = 32 << 20


def tune_malloc() -> bool:
    """Set both thresholds in this process (children forked later inherit them); True when set.

    Left alone when the environment already tunes malloc (``GLIBC_TUNABLES``, ``MALLOC_*``: the
    operator's choice wins) or the C library has no ``mallopt`` (not glibc)."""
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
