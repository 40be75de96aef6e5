"""What every service process shares: its command line, stop signal handling, logging."""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from shared.config import PipelineConfig
from shared.malloc_tuning import tune_malloc
from shared.parent_watch import die_with_parent
from shared.stats import ServiceStats

# Seconds from the first SIGTERM/SIGINT until a service that is still running exits anyway.
# Under the 10 s that supervisord (stopwaitsecs), systemd, docker and podman give before SIGKILL:
# a stop is then never a kill (exit 137, nothing logged), and the log shows where each thread was.
STOP_DEADLINE = 8.0


class StopFlag:
    """Set by SIGTERM/SIGINT so that loops finish their batch and exit cleanly; a service still
    running ``STOP_DEADLINE`` seconds later logs every thread's stack and exits 0."""

    def __init__(self) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)
        atexit.register(_ignore_late_stop_signals)

    def _set(self, *_args) -> None:
        if not self.stopping:
            timer = threading.Timer(STOP_DEADLINE, _stop_overdue, (STOP_DEADLINE,))
            timer.daemon = True  # a service that stops in time is not held by it
            timer.start()
        self.stopping = True

    def __bool__(self) -> bool:
        return self.stopping


def _stop_overdue(deadline: float) -> None:
    """The stop signal came ``deadline`` s ago and the service is still here: say where each
    thread was (the bug to fix) and leave."""
    sys.stderr.write(
        f"pktscope: service pid {os.getpid()} still running {deadline:g} s after the stop signal; "
        "exiting now. Its threads:\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(0)


def _ignore_late_stop_signals() -> None:
    """A service that is exiting has nothing left to stop: ignore SIGTERM/SIGINT from here on.

    Why: late in interpreter shutdown CPython puts the default action back for signals that had
    a Python handler, so a SIGTERM then (supervisord stopping a decoder that was already leaving
    after its end of stream) killed a finished service: "terminated by SIGTERM", exit 143, where
    it had exited 0. An ignored signal is left ignored (tests/test_stop_flag.py checks it).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Young-generation threshold for the cyclic GC in service loops. Every frame unpacks hundreds
# of tuples; with CPython's default (700) the collector ran several times per frame and walked
# the flow table's long-lived state over and over. Measured on sv-merged.pcap with the stages
# run in one process, as scripts/bench_stages.py does (median of 3): 50,000 cut unpacking
# records by 36%, the flow table by 17%, unpacking flow events by 40%. Hot-path objects form no
# cycles, so collections find nothing (0 objects collected in every run measured); this only
# makes them rarer. The count is of live young objects (allocations less deallocations), so a
# batch's records, freed with it, never add up: what reaches the threshold is state that lives
# on (flows, waiting events). At 50,000 the flow-tracker still collected 9 times on the 5x bench
# capture, each walk of the young flows and events ~20 ms: 0.18 of its 1.1 CPU s in one process;
# at 500,000 none (docs/benchmarks.md, 2026-12-04 (2)).
GC_GEN0_THRESHOLD = 500_000


def profiled(name: str, fn: Callable[[], int]) -> int:
    """Run a service's main loop, under cProfile when ``PKTSCOPE_PROFILE_DIR`` is set.

    For engineers: ``PKTSCOPE_PROFILE_DIR=/tmp/prof pktscope run --read FILE`` leaves one
    ``<service>-<pid>.prof`` per process (read with ``python -m pstats``), the pipeline's real
    per-stage costs including socket and framing overhead.
    """
    out_dir = os.environ.get("PKTSCOPE_PROFILE_DIR")
    if not out_dir:
        return fn()
    import cProfile
    import time

    prof = cProfile.Profile(time.process_time)  # CPU time: six processes share two cores
    try:
        return prof.runcall(fn)
    finally:
        os.makedirs(out_dir, exist_ok=True)
        prof.dump_stats(os.path.join(out_dir, f"{name}-{os.getpid()}.prof"))


def loop_starting(stats: ServiceStats) -> None:
    """Everything a service does once, just before its frame loop: tune the GC, say it is ready."""
    tune_gc()
    stats.ready()


def tune_gc() -> None:
    """Call once a service has imported and built everything, just before its loop starts.

    ``gc.freeze`` moves the start-up objects (modules, tables, compiled layouts) out of the
    collector's sight for good, and a high young threshold makes collections rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def service_parser(name: str, with_index: bool = False) -> argparse.ArgumentParser:
    """The command line of ``python -m services.NAME``; apart so that launchers' commands can be checked."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}", description=f"pktscope {name} service"
    )
    parser.add_argument("--config", required=True, help="pipeline.json written by `pktscope run`")
    if with_index:
        parser.add_argument("--index", type=int, default=0, help="which instance of the stage this is (0-based)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def service_args(name: str, with_index: bool = False, argv: list[str] | None = None) -> argparse.Namespace:
    parser = service_parser(name, with_index)
    args = parser.parse_args(argv)
    # under supervisord: if it is killed (even -9), stop instead of running on unsupervised
    die_with_parent(signal.SIGTERM, expected_parent=os.getppid())
    tune_malloc()  # frame-sized buffers stay in the heap instead of being mapped per frame
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {name}%(process)d %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.cfg = PipelineConfig.load(args.config)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read config {args.config}: {exc}")
    from shared import stats

    stats.RUN_ID = args.cfg.run_id
    return args
