"""`pktscope stop`: stop the pipeline of a run directory cleanly, from another terminal or a script."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import xmlrpc.client
from pathlib import Path

from services.cli.common import CliError
from services.cli.runlock import holder_pid
from services.cli.supervisor import Supervisor, running_pid
from shared.config import default_run_dir

STOP_ORDER = ("capture", "decoder", "flowtracker", "detector", "redis")  # upstream first


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stop",
        help="stop the pipeline running in a run directory",
        description="Stop the pipeline of a run directory: the `pktscope run` that owns it is asked to "
        "stop (as Ctrl-C would: it drains, prints its summary and exits), or a supervisord left "
        "without one is shut down, services upstream first.",
    )
    p.add_argument(
        "--run-dir", type=Path, default=None, help=f"the pipeline's run directory (default {default_run_dir()})"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop (default 60)")
    p.set_defaults(func=run)


def _wait_gone(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.05)
    return False


def run(args: argparse.Namespace) -> int:
    run_dir = (args.run_dir or default_run_dir()).resolve()
    owner = holder_pid(run_dir)
    if owner > 0:
        os.kill(owner, signal.SIGTERM)
        if not _wait_gone(lambda: holder_pid(run_dir) > 0, args.timeout):
            raise CliError(
                f"pktscope run (pid {owner}) did not stop within {args.timeout:.0f} s; "
                f"`kill -9 {owner}` stops it and its services with it"
            )
        print(f"pktscope: stopped the pipeline in {run_dir} (pktscope run pid {owner})")
        return 0
    sup_pid = running_pid(run_dir)
    if sup_pid is None:
        print(f"pktscope: no pipeline is running in {run_dir}")
        return 1
    sup = Supervisor(run_dir)
    for group in STOP_ORDER:
        sup.stop_group(group)
    with contextlib.suppress(OSError, xmlrpc.client.Fault):
        sup.rpc.shutdown()
    if not _wait_gone(lambda: running_pid(run_dir) is not None, args.timeout):
        with contextlib.suppress(OSError):
            os.kill(sup_pid, signal.SIGTERM)
        if not _wait_gone(lambda: running_pid(run_dir) is not None, 10):
            raise CliError(f"supervisord (pid {sup_pid}) did not stop; `kill {sup_pid}`")
    print(f"pktscope: stopped the supervisord left in {run_dir} (pid {sup_pid})")
    return 0
