"""Registrable domain (eTLD+1) of a host name, so that a.cdn.example.co.uk and b.example.co.uk
count as one destination, example.co.uk.

The Public Suffix List comes from the ``publicsuffixlist`` package, which bundles
``public_suffix_list.dat`` and only reads that file: it fetches nothing at run time (its
``publicsuffixlist.update`` module downloads a newer list only when someone runs it by hand).
Both the ICANN and the private section are used, so user.github.io is its own registrable
domain, as browsers treat it. Unknown TLDs count as public suffixes (host.corp.internal ->
corp.internal).

Names come from the network (SNI, Host headers, DNS), so anything odd gives "": IP literals,
single labels, empty or over-long labels, characters that are not allowed in host names.
Unicode names are converted to their ASCII (punycode) form with IDNA 2008 / UTS 46, falling
back to IDNA 2003, so the result is always plain ASCII and the same for both spellings.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

from services.detector.enrich import psl_cache

_PSL = psl_cache.load()  # parsed once at setup (psl_cache.py), not at each start
_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")  # '_' appears in real DNS names (_dmarc, srv records)
_MAX_NAME = 253
_PORT = re.compile(r":[0-9]{1,5}\Z")


def registrable_domain(name: str) -> str:
    """eTLD+1 of ``name``: lower-case ASCII without a trailing dot, or "" when there is none."""
    if not isinstance(name, str) or not name or len(name) > 4 * _MAX_NAME:
        return ""
    return _registrable(name)


@functools.lru_cache(maxsize=65536)
def _registrable(name: str) -> str:
    host = _ascii_host(name)
    if not host:
        return ""
    return _PSL.privatesuffix(host) or ""


def _ascii_host(name: str) -> str:
    """Lower-case ASCII host name, or "" for IP literals and names that are not host names."""
    host = name.strip()
    if host.startswith("["):  # bracketed IPv6 literal, maybe with a port
        return ""
    if host.count(":") == 1:  # "example.com:443" from a Host header
        host = _PORT.sub("", host)
    host = host.rstrip(".").lower()
    if not host or _is_ip(host):
        return ""
    if not host.isascii():
        host = _to_ascii(host).rstrip(".")  # UTS 46 maps '。' and friends to '.'
        if not host:
            return ""
    labels = host.split(".")
    if len(labels) < 2 or len(host) > _MAX_NAME:
        return ""
    if not all(_LABEL.match(label) for label in labels):
        return ""
    if labels[-1].isdigit():  # a numeric TLD: an IP-like string such as 1.2.3 or 010.1
        return ""
    if "xn--" in host and not all(_punycode_ok(label) for label in labels):
        return ""
    return host


def _punycode_ok(label: str) -> bool:
    """False for an A-label whose punycode part does not decode (e.g. a bare "xn--")."""
    if not label.startswith("xn--"):
        return True
    try:
        return bool(label[4:].encode("ascii").decode("punycode"))
    except UnicodeError:
        return False


def _to_ascii(host: str) -> str:
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
