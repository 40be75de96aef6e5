"""`python -m services.observer --config RUN_DIR/pipeline.json`"""

from __future__ import annotations

import sys

from shared.service import StopFlag, profiled, service_args

# imported at first use (the public suffix list is parsed then); the fork launcher's zygote
# imports it ahead for every forked process (services/launcher/zygote.py)
PRELOAD = ("services.detector.enrich.domains",)


def main(argv: list[str] | None = None) -> int:
    args = service_args("observer", argv=argv)
    from services.observer.service import ObserverService

    stop = StopFlag()
    return profiled("observer", lambda: ObserverService(args.cfg, stop).run())


if __name__ == "__main__":
    sys.exit(main())
