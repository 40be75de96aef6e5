"""``python -m services.detector --config PATH``: see services/detector/service.py."""

from __future__ import annotations

import sys

from services.detector.service import DetectorService
from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("detector", with_index=True, argv=argv)
    stop = StopFlag()
    service = DetectorService(args.cfg, stop, args.index)
    return profiled(service.name, service.run)


if __name__ == "__main__":
    sys.exit(main())
