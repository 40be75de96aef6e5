"""Synthetic GeoLite2-Country and GeoLite2-ASN databases that cover the whole address space.

For benchmarks: every IPv4 /8 and every IPv6 /8 gets a country and an AS, drawn from a seeded
generator (the same files every run), so that every globally routable address of any capture
is found, as it would be with the real databases. 2000::/3 (today's unicast space) is split
finer, into /12s, and a few well-known /32s are carved out of it, so lookups walk trees of
realistic depth. Same layout as MaxMind's files (IPv6 trees, IPv4 under ::/96), so geoip2's
``Reader.country()`` / ``Reader.asn()`` read them as the detector does.

    .venv/bin/python -m scripts.mmdb_synthetic DIR   # writes DIR/country.mmdb and DIR/asn.mmdb
"""

from __future__ import annotations

import ipaddress
import random
import sys
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

COUNTRIES = (
    "US", "DE", "GB", "FR", "NL", "IE", "SE", "FI", "PL", "IT", "ES", "CH", "AT", "BE", "CZ", "RU",
    "UA", "CN", "JP", "KR", "IN", "SG", "AU", "BR", "AR", "CA", "MX", "ZA", "NG", "IL", "TR", "HK",
)  # fmt: skip
WELL_KNOWN_V6 = ("2001:4860::/32", "2a00:1450::/32", "2606:4700::/32", "2620:fe::/48", "2a03:2880::/32")


def synthetic_networks(seed: int = 4) -> list[tuple[str, str, int]]:
    """(CIDR, ISO country, ASN) covering all of IPv4 and IPv6, supernets before their subnets."""
    rng = random.Random(seed)
    nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, int]] = []

    def add(cidr: str) -> None:
        nets.append((ipaddress.ip_network(cidr), rng.choice(COUNTRIES), rng.randrange(1, 64496)))

    for first in range(256):
        add(f"{first:x}00::/8")
    for block in ipaddress.ip_network("2000::/3").subnets(new_prefix=12):
        add(str(block))
    for first in range(1, 224):
        add(f"{first}.0.0.0/8")
    for cidr in WELL_KNOWN_V6:
        add(cidr)
    # mmdb-writer splits a leaf when a subnet comes later, but a later supernet would replace
    # its subnets: order by prefix length in the IPv6 tree (IPv4 /8 = ::/96 + 8 = /104).
    nets.sort(key=lambda n: n[0].prefixlen + (96 if n[0].version == 4 else 0))
    return [(str(net), iso, asn) for net, iso, asn in nets]


def maxmind_writer(database_type: str, origin: str = "synthetic") -> MMDBWriter:
    """A writer laid out like MaxMind's files (tests/mmdb_factory.py uses it too)."""
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"pktscope {origin} {database_type}"},
    )


def build_synthetic_dbs(directory: str | Path, seed: int = 4) -> tuple[Path, Path]:
    """Write ``country.mmdb`` (GeoLite2-Country) and ``asn.mmdb`` (GeoLite2-ASN) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    country_db, asn_db = maxmind_writer("GeoLite2-Country"), maxmind_writer("GeoLite2-ASN")
    for cidr, iso, asn in synthetic_networks(seed):
        country = {"iso_code": iso, "names": {"en": iso}}
        country_db.insert_network(IPSet([cidr]), {"country": country, "registered_country": country})
        asn_db.insert_network(
            IPSet([cidr]),
            {"autonomous_system_number": asn, "autonomous_system_organization": f"Synthetic AS{asn}"},
        )
    country_path, asn_path = directory / "country.mmdb", directory / "asn.mmdb"
    country_db.to_db_file(str(country_path))
    asn_db.to_db_file(str(asn_path))
    return country_path, asn_path


if __name__ == "__main__":
    for path in build_synthetic_dbs(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(path)
