"""Which addresses count as local: a flow is outbound when its initiator is one of them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

DEFAULT_LOCAL_NETS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
)


class LocalNets:
    """Membership test on raw (4 or 16 byte) or text addresses, with a small memo.

    The memo is bounded: addresses come from the network, so an attacker could otherwise grow it.
    """

    def __init__(self, cidrs: Iterable[str] = DEFAULT_LOCAL_NETS, memo_limit: int = 65536) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._memo: dict[bytes | str, bool] = {}
        self._memo_limit = memo_limit

    def add(self, cidr: str) -> None:
        self.networks.append(ipaddress.ip_network(cidr, strict=False))
        self._memo.clear()

    def __contains__(self, addr: bytes | str) -> bool:
        hit = self._memo.get(addr)
        if hit is not None:
            return hit
        ip = ipaddress.ip_address(addr)
        result = any(ip.version == n.version and ip in n for n in self.networks)
        if len(self._memo) >= self._memo_limit:
            self._memo.clear()
        self._memo[addr] = result
        return result


def interface_addresses(ifname: str) -> list[str]:
    """The addresses of a live interface, as /32 or /128 networks (empty when unknown).

    ``any`` (libpcap's every-interface capture) gives the addresses of every interface.
    """
    import psutil

    table = psutil.net_if_addrs()
    nics = [n for addrs in table.values() for n in addrs] if ifname == "any" else table.get(ifname, ())
    out = []
    for snic in nics:
        addr = snic.address.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        out.append(f"{ip}/{ip.max_prefixlen}")
    return out
