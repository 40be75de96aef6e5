"""Optional enrichment (services/detector/enrich/): GeoIP, registrable domains, process
attribution and binary identity. Each part is loaded when its module and data are there; the
detector works without any of them (host entities, IP/name labels, no geo/identity signals).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from shared.config import PipelineConfig

log = logging.getLogger(__name__)


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"services.detector.enrich.{name}")
    except ImportError as exc:
        log.info("enrichment %s unavailable: %s", name, exc)
        return None


def _fallback_domain(name: str) -> str:
    """Without the public-suffix module: the last two labels of a name (never used for IPs)."""
    name = name.strip(".").lower()
    if not name or ":" in name or name.replace(".", "").isdigit():
        return ""
    return ".".join(name.split(".")[-2:])


@dataclass
class Enrichers:
    """What the engine calls; every field may be None (that part is off)."""

    geoip: Any | None = None  # .lookup(ip) -> (country, asn, as_org)
    registrable_domain: Any = _fallback_domain  # (name) -> str
    attributor: Any | None = None  # .lookup(proto, lip, lport, rip, rport) -> ProcessInfo | None
    identity: Any | None = None  # .identity(exe, pid) -> sha256 hex | None

    @classmethod
    def load(cls, cfg: PipelineConfig) -> Enrichers:
        """Build what the config asks for and what is installed; failures are logged, not fatal."""
        out = cls()
        det = cfg.detector
        domains = _module("domains")
        if domains is not None:
            out.registrable_domain = domains.registrable_domain
        if det.geoip_country_db or det.geoip_asn_db:
            geoip = _module("geoip")
            if geoip is not None:
                try:
                    out.geoip = geoip.GeoIP(det.geoip_country_db, det.geoip_asn_db)
                except Exception as exc:  # a missing or corrupt database must not stop the detector
                    log.warning("GeoIP disabled: %s", exc)
        if cfg.live and det.attribute_processes:
            attribution = _module("attribution")
            if attribution is not None:
                out.attributor = attribution.ProcessAttributor()
            kernel = _module("kernel_attribution") if cfg.procwatch_enabled else None
            if kernel is not None:  # kernel events first, the psutil poll for what they miss
                out.attributor = kernel.KernelAttributor(
                    cfg.procwatch_endpoint,
                    cfg.effective_redis_url,
                    cfg.redis_prefix,
                    fallback=out.attributor,
                    redis_cluster=cfg.redis_cluster,
                )
            identity = _module("identity")
            if identity is not None:
                out.identity = identity.BinaryIdentity()
        return out
