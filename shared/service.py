"""What every service process shares: its command line, stop signal handling, logging."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from shared.config import PipelineConfig


class StopFlag:
    """Set by SIGTERM/SIGINT so that loops finish their batch and exit cleanly."""

    def __init__(self) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_args) -> None:
        self.stopping = True

    def __bool__(self) -> bool:
        return self.stopping


def service_args(name: str, with_index: bool = False, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}", description=f"pktscope {name} service"
    )
    parser.add_argument("--config", required=True, help="pipeline.json written by `pktscope run`")
    if with_index:
        parser.add_argument("--index", type=int, default=0, help="which decoder this is (0-based)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
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
