"""Registrable domains through the bundled Public Suffix List."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.detector.enrich import domains
from services.detector.enrich.domains import registrable_domain

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.example.co.uk", "example.co.uk"),
        ("a.b.example.com", "example.com"),
        ("example.com", "example.com"),
        ("user.github.io", "user.github.io"),  # private section of the list
        ("a.b.user.github.io", "user.github.io"),
        ("host.corp.internal", "corp.internal"),  # unknown TLD: treated as a public suffix
        ("www.example.com.", "example.com"),  # trailing dot
        ("WWW.Example.CO.UK", "example.co.uk"),  # upper case
        ("example.com:8443", "example.com"),  # Host header with a port
        ("_dmarc.example.org", "example.org"),
        # IDN: Unicode and punycode spellings give the same ASCII answer.
        ("www.Bücher.de", "xn--bcher-kva.de"),
        ("WWW.BÜCHER.DE", "xn--bcher-kva.de"),
        ("shop.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008 keeps ß, as browsers do
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("www.example.com。", "example.com"),  # ideographic full stop
    ],
)
def test_registrable_domain(name, expected):
    assert registrable_domain(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "1.2.3.4",
        "192.168.1.1.",
        "::1",
        "2001:db8::1",
        "[2001:db8::1]:443",
        "1.2.3",  # numeric TLD
        "localhost",  # single label
        "co.uk",  # a public suffix itself
        "com",
        "",
        ".",
        "a..b.com",
        "exa mple.com",
        "evil\x00.com",
        "evil\x1b[31m.com",
        "x" * 64 + ".com",  # label too long
        ("a." * 130) + "com",  # name too long
        "xn--.com",
    ],
)
def test_no_registrable_domain(name):
    assert registrable_domain(name) == ""


def test_non_strings_give_empty():
    assert registrable_domain(None) == ""  # type: ignore[arg-type]
    assert registrable_domain(b"example.com") == ""  # type: ignore[arg-type]


def test_cache_is_bounded():
    domains._registrable.cache_clear()
    for i in range(100):
        registrable_domain(f"h{i}.example.com")
    registrable_domain("h1.example.com")
    info = domains._registrable.cache_info()
    assert info.hits == 1 and info.currsize == 100
    assert info.maxsize == 65536


def test_list_is_bundled_and_never_fetched():
    """In a network namespace without any network, a fresh list still loads from the bundled file."""
    code = (
        "import socket, publicsuffixlist\n"
        "def refuse(*a, **k): raise SystemExit('network use')\n"
        "socket.socket = socket.create_connection = socket.getaddrinfo = refuse\n"
        "from services.detector.enrich.domains import registrable_domain\n"
        "psl = publicsuffixlist.PublicSuffixList()\n"
        "assert psl.privatesuffix('www.example.co.uk') == 'example.co.uk'\n"
        "assert registrable_domain('a.b.example.com') == 'example.com'\n"
        "assert publicsuffixlist.PSLFILE.endswith('public_suffix_list.dat')\n"
        "print('offline ok')\n"
    )
    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "offline ok"
