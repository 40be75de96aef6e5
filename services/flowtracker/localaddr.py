"""A fast "is this address local?" test for raw 4/16-byte addresses, one call per new flow.

shared.localnet.LocalNets answers the same question through ``ipaddress`` objects (tens of
microseconds per new address); here each network is an (address, mask) integer pair, so a
test is one ``int.from_bytes`` and a few ANDs. Built from the same networks LocalNets holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MEMO_LIMIT = 65536  # addresses come from the network: the memo must stay bounded


class LocalMatcher:
    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str]) -> None:
        self.v4: list[tuple[int, int]] = []
        self.v6: list[tuple[int, int]] = []
        for net in networks:
            net = ipaddress.ip_network(net, strict=False)
            pairs = self.v4 if net.version == 4 else self.v6
            pairs.append((int(net.network_address), int(net.netmask)))
        self._memo: dict[bytes, bool] = {}

    def __call__(self, raw: bytes) -> bool:
        hit = self._memo.get(raw)
        if hit is not None:
            return hit
        n = len(raw)
        pairs = self.v4 if n == 4 else self.v6 if n == 16 else ()
        value = int.from_bytes(raw, "big")
        result = False
        for net, mask in pairs:  # a loop, not any(generator): half the cost of a miss
            if value & mask == net:
                result = True
                break
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[raw] = result
        return result


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("LocalMatcher",))
