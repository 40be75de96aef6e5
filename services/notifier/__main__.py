"""`python -m services.notifier --config RUN_DIR/pipeline.json`"""

from __future__ import annotations

import sys

from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("notifier", argv=argv)
    from services.notifier.service import NotifierService

    stop = StopFlag()
    return profiled("notifier", lambda: NotifierService(args.cfg, stop).run())


if __name__ == "__main__":
    sys.exit(main())
