"""``python -m services.detector --config PATH``: see services/detector/service.py."""

from __future__ import annotations

import sys

from services.detector.service import DetectorService
from shared.service import StopFlag, profiled, service_args

# imported at first use (the public suffix list is parsed then); the fork launcher's zygote
# imports it ahead for every forked process (services/launcher/zygote.py)
PRELOAD = ("services.detector.enrich.domains",)


def main(argv: list[str] | None = None) -> int:
    args = service_args("detector", with_index=True, argv=argv)
    stop = StopFlag()
    service = DetectorService(args.cfg, stop, args.index)
    return profiled(service.name, service.run)


if __name__ == "__main__":
    sys.exit(main())
