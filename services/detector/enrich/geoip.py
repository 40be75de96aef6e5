"""Country and autonomous system of a remote address, from local MaxMind-format databases.

The databases are files the operator provides (GeoLite2-Country or -City, GeoLite2-ASN, or
compatible ones such as DB-IP Lite or GeoIP2-ISP); nothing is ever downloaded. A database that
is not configured, missing or unreadable makes its answer unknown ("" / 0) and is reported once
in the log: the detector works without GeoIP, it just has no country/AS signals.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections import Counter

import geoip2.database
import geoip2.errors
import maxminddb

log = logging.getLogger(__name__)

UNKNOWN: tuple[str, int, str] = ("", 0, "")
_ORG_MAX = 200  # AS organisation names are short; bound what a crafted database could hand us


def _open(path: str, what: str, accepted: tuple[str, ...]) -> geoip2.database.Reader | None:
    """Open one database, or log once why it cannot be used and return None."""
    if not path:
        log.warning("GeoIP %s database not configured: %s unknown", what, what)
        return None
    try:
        reader = geoip2.database.Reader(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        log.warning("GeoIP %s database %s unusable (%s): %s unknown", what, path, exc, what)
        return None
    db_type = reader.metadata().database_type
    if not any(a in db_type for a in accepted):
        log.warning("GeoIP %s database %s is a %r database: %s unknown", what, path, db_type, what)
        reader.close()
        return None
    return reader


class GeoIP:
    """``lookup(ip) -> (country ISO code, ASN, AS organisation)``, "" / 0 where unknown.

    Addresses that are not globally routable (private, loopback, link-local, CGNAT,
    documentation, multicast, unspecified) are answered unknown without touching a database.
    IPv4-mapped IPv6 addresses are looked up as IPv4. Answers are kept in a bounded LRU cache
    because a host talks to the same few thousand peers over and over.
    """

    def __init__(self, country_db: str = "", asn_db: str = "", cache_size: int = 65536) -> None:
        self.counters: Counter[str] = Counter()
        self._country = _open(country_db, "country", ("City", "Country", "Enterprise"))
        self._asn = _open(asn_db, "AS", ("ASN", "ISP"))
        self._country_method = None
        if self._country is not None:
            db_type = self._country.metadata().database_type
            if "City" in db_type:
                self._country_method = self._country.city
            elif "Enterprise" in db_type:
                self._country_method = self._country.enterprise
            else:
                self._country_method = self._country.country
        self._asn_method = None
        if self._asn is not None:
            db_type = self._asn.metadata().database_type
            self._asn_method = self._asn.isp if "ISP" in db_type else self._asn.asn
        self._error_logged = False
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @property
    def available(self) -> bool:
        """True when at least one of the two databases is usable."""
        return self._country is not None or self._asn is not None

    @property
    def country_available(self) -> bool:
        return self._country is not None

    @property
    def asn_available(self) -> bool:
        return self._asn is not None

    def lookup(self, ip: str) -> tuple[str, int, str]:
        """(ISO country code or "", ASN or 0, AS organisation or "") of one address (text form)."""
        return self._cached(ip)

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()
        self._country = self._asn = None
        self._country_method = self._asn_method = None
        self._cached.cache_clear()

    # --- internals --------------------------------------------------------------------------
    def _lookup_uncached(self, ip: str) -> tuple[str, int, str]:
        if not self.available:
            return UNKNOWN
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            self.counters["bad_address"] += 1
            return UNKNOWN
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            self.counters["not_global"] += 1
            return UNKNOWN
        self.counters["lookups"] += 1
        return (self._country_of(addr), *self._as_of(addr))

    def _country_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if self._country_method is None:
            return ""
        try:
            resp = self._country_method(addr)
        except geoip2.errors.AddressNotFoundError:
            return ""
        except (ValueError, TypeError, maxminddb.InvalidDatabaseError) as exc:
            self._lookup_failed("country", exc)
            return ""
        # Some ranges (anycast, satellite) carry only the registration country: better than nothing.
        code = resp.country.iso_code or resp.registered_country.iso_code or ""
        return code if len(code) == 2 and code.isascii() and code.isalpha() else ""

    def _as_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, str]:
        if self._asn_method is None:
            return 0, ""
        try:
            resp = self._asn_method(addr)
        except geoip2.errors.AddressNotFoundError:
            return 0, ""
        except (ValueError, TypeError, maxminddb.InvalidDatabaseError) as exc:
            self._lookup_failed("AS", exc)
            return 0, ""
        asn = resp.autonomous_system_number
        org = resp.autonomous_system_organization or ""
        return (asn if isinstance(asn, int) and asn > 0 else 0), str(org)[:_ORG_MAX]

    def _lookup_failed(self, what: str, exc: Exception) -> None:
        self.counters["errors"] += 1
        if not self._error_logged:
            self._error_logged = True
            log.warning("GeoIP %s lookup failed (%s); further failures are only counted", what, exc)
