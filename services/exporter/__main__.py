"""`python -m services.exporter --config RUN_DIR/pipeline.json`"""

from __future__ import annotations

import sys

from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("exporter", argv=argv)
    from services.exporter.service import ExporterService

    stop = StopFlag()
    return profiled("exporter", lambda: ExporterService(args.cfg, stop).run())


if __name__ == "__main__":
    sys.exit(main())
