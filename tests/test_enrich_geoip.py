"""GeoIP enrichment against small real .mmdb files in the GeoLite2 layouts."""

from __future__ import annotations

import logging

import pytest
from mmdb_factory import build_asn_db, build_country_db

from services.detector.enrich.geoip import GeoIP

COUNTRIES = {"81.2.69.0/24": "GB", "89.160.20.0/24": "DE", "2a02:c7c::/32": "GB", "8.8.8.0/24": "US"}
ASNS = {
    "81.2.69.0/24": (20712, "Andrews & Arnold Ltd"),
    "89.160.20.0/24": (64500, "Example Org"),
    "2a02:c7c::/32": (64501, "Example Six"),
}


@pytest.fixture
def dbs(tmp_path):
    country = build_country_db(tmp_path / "GeoLite2-Country.mmdb", COUNTRIES)
    asn = build_asn_db(tmp_path / "GeoLite2-ASN.mmdb", ASNS)
    return str(country), str(asn)


def test_country_and_as_of_ipv4_and_ipv6(dbs):
    geo = GeoIP(*dbs)
    assert geo.available and geo.country_available and geo.asn_available
    assert geo.lookup("89.160.20.112") == ("DE", 64500, "Example Org")
    assert geo.lookup("81.2.69.142") == ("GB", 20712, "Andrews & Arnold Ltd")
    assert geo.lookup("2a02:c7c:1234::1") == ("GB", 64501, "Example Six")
    # In the country database but not the AS one; in neither.
    assert geo.lookup("8.8.8.8") == ("US", 0, "")
    assert geo.lookup("1.1.1.1") == ("", 0, "")


def test_ipv4_mapped_is_looked_up_as_ipv4(dbs):
    geo = GeoIP(*dbs)
    assert geo.lookup("::ffff:89.160.20.112") == ("DE", 64500, "Example Org")


def test_private_addresses_are_unknown_without_a_lookup(tmp_path):
    # A database that (wrongly) lists private ranges proves that they are never looked up.
    nets = {"10.0.0.0/8": "DE", "127.0.0.0/8": "DE", "192.168.0.0/16": "DE", "fc00::/7": "DE"}
    geo = GeoIP(str(build_country_db(tmp_path / "c.mmdb", nets)))
    for ip in ("10.1.2.3", "127.0.0.1", "192.168.1.1", "fd00::1", "::1", "169.254.1.1", "100.64.0.1"):
        assert geo.lookup(ip) == ("", 0, ""), ip
    assert geo.counters["lookups"] == 0
    assert geo.counters["not_global"] == 7


def test_bad_addresses_are_unknown(dbs):
    geo = GeoIP(*dbs)
    for bad in ("", "not-an-ip", "1.2.3.4.5", "89.160.20.112\x00", "[::1]"):
        assert geo.lookup(bad) == ("", 0, "")
    assert geo.counters["bad_address"] == 5


def test_cache_is_bounded_and_hits(dbs):
    geo = GeoIP(*dbs, cache_size=4)
    for _ in range(3):
        geo.lookup("89.160.20.112")
    assert geo.counters["lookups"] == 1
    for i in range(10):
        geo.lookup(f"89.160.20.{i}")
    info = geo._cached.cache_info()
    assert info.currsize == 4 and info.maxsize == 4
    geo.lookup("89.160.20.112")  # evicted by the ten others: looked up again
    assert geo.counters["lookups"] == 12


def test_missing_unset_and_corrupt_files_are_unknown_and_logged_once(tmp_path, caplog):
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"\x00not a maxmind database" * 100)
    with caplog.at_level(logging.WARNING, logger="services.detector.enrich.geoip"):
        geo = GeoIP(str(tmp_path / "missing.mmdb"), str(junk))
        for _ in range(5):
            assert geo.lookup("89.160.20.112") == ("", 0, "")
        unset = GeoIP()
        assert unset.lookup("81.2.69.142") == ("", 0, "")
    assert not geo.available and not unset.available
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert sum("missing.mmdb" in m for m in messages) == 1
    assert sum("junk.mmdb" in m for m in messages) == 1
    assert sum("not configured" in m for m in messages) == 2


def test_wrong_database_kind_is_refused(dbs, caplog):
    country, asn = dbs
    with caplog.at_level(logging.WARNING, logger="services.detector.enrich.geoip"):
        geo = GeoIP(country_db=asn, asn_db=country)  # swapped by mistake
    assert not geo.available
    assert geo.lookup("89.160.20.112") == ("", 0, "")
    assert sum("database" in r.getMessage() for r in caplog.records) == 2


def test_one_database_is_enough(dbs):
    country, asn = dbs
    only_asn = GeoIP(asn_db=asn)
    assert only_asn.available and not only_asn.country_available
    assert only_asn.lookup("89.160.20.112") == ("", 64500, "Example Org")
    only_country = GeoIP(country_db=country)
    assert only_country.lookup("89.160.20.112") == ("DE", 0, "")
    only_country.close()
    assert only_country.lookup("89.160.20.112") == ("", 0, "")
