"""``python -m services.flowtracker --config PATH`` (console script ``pktscope-flowtracker``)."""

from __future__ import annotations

import sys

from shared.service import StopFlag, profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("flowtracker", with_index=True, argv=argv)
    stop = StopFlag()
    from services.flowtracker.service import FlowTrackerService, connect_redis

    cfg = args.cfg
    r = connect_redis(cfg.effective_redis_url, cfg.redis_cluster, stop)
    if r is None:
        return 0  # stopped before Redis answered
    service = FlowTrackerService(cfg, r, args.index)
    return profiled(service.name, lambda: service.run(stop))


if __name__ == "__main__":
    sys.exit(main())
