"""``python -m services.decoder --config PATH --index I`` (console script ``pktscope-decoder``)."""

from __future__ import annotations

import sys

from shared.service import StopFlag, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("decoder", with_index=True, argv=argv)
    stop = StopFlag()
    from services.decoder.service import DecoderService, connect_redis, load_app_inspector

    cfg = args.cfg
    service = DecoderService(cfg, args.index, load_app_inspector(), connect_redis(cfg.effective_redis_url))
    return service.run(stop)


if __name__ == "__main__":
    sys.exit(main())
