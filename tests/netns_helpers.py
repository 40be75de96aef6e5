"""Addresses for the network namespaces tests create: a /30 no interface of the host holds yet.

A namespace left behind by a killed test run keeps its veth and its host address; a new one that
picked the same /30 made the host answer through the old veth, and the new namespace could not
reach it (seen as "cannot reach 10.213.105.1" with two host interfaces holding that address).
"""

from __future__ import annotations

import subprocess


def host_ipv4() -> set[str]:
    """Every IPv4 address on the host's interfaces."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return {fields[3].split("/")[0] for fields in (line.split() for line in out.splitlines()) if len(fields) > 3}


def free_octet(prefix: str, start: int = 0, taken: set[int] | None = None) -> int:
    """An X such that ``prefix.X.1`` is on no host interface (nor in ``taken``), from ``start`` on."""
    used = host_ipv4()
    for k in range(250):
        octet = (start + k) % 250 + 1
        if f"{prefix}.{octet}.1" not in used and (taken is None or octet not in taken):
            return octet
    raise AssertionError(f"no free {prefix}.X.0/30 left on this host: remove stale veths (ip -br addr)")
