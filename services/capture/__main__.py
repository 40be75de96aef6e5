"""``python -m services.capture --config PIPELINE.json``: the capture process."""

from __future__ import annotations

import sys

from services.capture.service import run
from shared.service import profiled, service_args


def main(argv: list[str] | None = None) -> int:
    args = service_args("capture", with_index=True, argv=argv)
    return profiled(args.cfg.capture_name(args.index), lambda: run(args.cfg, args.index))


if __name__ == "__main__":
    sys.exit(main())
