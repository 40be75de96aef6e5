"""``python -m services.procwatch --config PATH``: see services/procwatch/service.py."""

from __future__ import annotations

import sys

from services.procwatch.service import ProcwatchService
from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("procwatch", argv=argv)
    stop = StopFlag()
    return profiled("procwatch", ProcwatchService(args.cfg, stop).run)


if __name__ == "__main__":
    sys.exit(main())
