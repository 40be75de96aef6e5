"""``python -m services.decoder --config PATH --index I|auto`` (console script ``pktscope-decoder``).

``--index auto`` claims the lowest free index through a Redis lease (services/decoder/index_claim.py),
so identical replicas (docker compose ``deploy: replicas``) each serve their own endpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from shared.redis_keys import Keys
from shared.service import StopFlag, profiled, service_args

log = logging.getLogger("pktscope.decoder")

EXIT_LEASE_LOST = 3  # another replica took our index: restart and claim again
# imported in main (not at import, to keep `python -m` lean); the fork launcher's zygote imports
# them ahead so each forked decoder has them (services/launcher/zygote.py)
# cryptography.x509 too: a decoder imports it at its first TLS certificate (services/decoder/app/
# tls.py), 25-35 CPU ms each (its name parser compiles regexes), which was 7% of each decoder's
# CPU on the 5x bench capture; the zygote pays it once for all of them.
PRELOAD = ("services.decoder.app.inspector", "cryptography.x509")


def take_auto_index(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``--index auto`` / ``--index=auto`` from argv (shared.service parses --index as an int)."""
    out: list[str] = []
    auto = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--index" and i + 1 < len(argv) and argv[i + 1] == "auto":
            auto = True
            i += 2
            continue
        if arg == "--index=auto":
            auto = True
        else:
            out.append(arg)
        i += 1
    return out, auto


def _stop_self() -> None:
    """Lease lost: stop the way SIGTERM does, so the decoder finishes its batch and exits."""
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv, auto = take_auto_index(list(sys.argv[1:] if argv is None else argv))
    args = service_args("decoder", with_index=True, argv=argv)
    stop = StopFlag()
    cfg = args.cfg
    claim = None
    if auto:
        from services.decoder.index_claim import IndexClaim

        url, cluster = cfg.effective_redis_url, cfg.redis_cluster
        claim = IndexClaim(url, Keys(cfg.redis_prefix), cfg.decoders, on_lost=_stop_self, cluster=cluster)
        index = claim.claim(stop=lambda: bool(stop))
        if index is None:
            log.info("stopping on signal before a decoder index was claimed")
            claim.close()
            return 0
        claim.start_heartbeat()
        args.index = index
    try:
        from services.decoder.service import DecoderService, connect_redis, load_app_inspector

        r = connect_redis(cfg.effective_redis_url, cluster=cfg.redis_cluster, stop=stop)
        if r is None:
            log.info("stopping on signal before Redis answered")
            return 0
        service = DecoderService(cfg, args.index, load_app_inspector(), r)
        if claim is not None:
            service.stats.info["claim"] = claim.owner
        code = profiled(service.name, lambda: service.run(stop))
    finally:
        if claim is not None:
            claim.close()
    return EXIT_LEASE_LOST if claim is not None and claim.lost else code


if __name__ == "__main__":
    sys.exit(main())
