"""``python -m services.flowtracker --config PATH`` (console script ``pktscope-flowtracker``)."""

from __future__ import annotations

import sys

from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("flowtracker", argv=argv)
    stop = StopFlag()
    import gc

    from services.flowtracker.service import GC_THRESHOLDS, FlowTrackerService, connect_redis

    gc.freeze()  # what was imported lives forever: keep it out of every collection
    gc.set_threshold(*GC_THRESHOLDS)

    cfg = args.cfg
    service = FlowTrackerService(cfg, connect_redis(cfg.effective_redis_url))
    return profiled("flowtracker", lambda: service.run(stop))


if __name__ == "__main__":
    sys.exit(main())
