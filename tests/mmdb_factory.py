"""Small MaxMind-format databases for tests, laid out like GeoLite2-Country and GeoLite2-ASN.

Both are IPv6 trees with IPv4 networks stored under ::/96, as MaxMind's own files are, so
geoip2's ``Reader.country()`` / ``Reader.asn()`` read them exactly like the real databases.
"""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from scripts.mmdb_synthetic import maxmind_writer

COUNTRY_NAMES = {"DE": "Germany", "US": "United States", "GB": "United Kingdom", "FR": "France"}


def _writer(database_type: str) -> MMDBWriter:
    return maxmind_writer(database_type, "test")


def build_country_db(path: str | Path, networks: dict[str, str]) -> Path:
    """Write a GeoLite2-Country database mapping each CIDR to an ISO country code."""
    writer = _writer("GeoLite2-Country")
    for cidr, iso in networks.items():
        country = {"iso_code": iso, "names": {"en": COUNTRY_NAMES.get(iso, iso)}}
        writer.insert_network(IPSet([cidr]), {"country": country, "registered_country": country})
    writer.to_db_file(str(path))
    return Path(path)


def build_asn_db(path: str | Path, networks: dict[str, tuple[int, str]]) -> Path:
    """Write a GeoLite2-ASN database mapping each CIDR to (AS number, AS organisation)."""
    writer = _writer("GeoLite2-ASN")
    for cidr, (asn, org) in networks.items():
        writer.insert_network(
            IPSet([cidr]), {"autonomous_system_number": asn, "autonomous_system_organization": org}
        )
    writer.to_db_file(str(path))
    return Path(path)
