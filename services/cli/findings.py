"""Findings on decoded packets: the ``anomaly`` field of `pktscope read` / `capture`, and `--findings`.

Each packet's ``anomaly`` is a list of {"kind", ...} maps, so filters can ask for
``anomaly`` or ``anomaly.kind == "cleartext_credential"``. Kinds:

    cleartext_credential         a login in the clear (from the decoder: services/decoder/app/
                                 credentials.py): protocol and user name, never the secret
    cleartext_http_unusual_port  an HTTP request to a port that is not one of HTTP's usual ones
    known_bad_address            source or destination on the known-bad list (``--bad-list FILE``:
                                 one address or CIDR a line, ``#`` comments)

Encrypted traffic gives no finding: credentials are only read from streams that are not TLS,
and an HTTP request is only seen when it is in the clear.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, TextIO

from .text import safe

HTTP_PORTS = frozenset((80, 8080, 8000, 8008, 8081, 8888, 3128, 591, 81))
MAX_BAD_ENTRIES = 1_000_000
MAX_SHOWN = 100_000


def load_bad_list(path: str) -> tuple[frozenset, list]:
    """(exact addresses, networks) from a known-bad list file; ValueError names the bad line."""
    addresses: set = set()
    networks: list = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                entry = line.split("#", 1)[0].strip()
                if not entry:
                    continue
                try:
                    net = ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{path}:{number}: {safe(entry)!r} is not an address or CIDR (one per line, # comments)"
                    ) from None
                if net.num_addresses == 1:
                    addresses.add(net.network_address)
                else:
                    networks.append(net)
                if len(addresses) + len(networks) > MAX_BAD_ENTRIES:
                    raise ValueError(f"{path}: more than {MAX_BAD_ENTRIES} entries")
    except OSError as exc:
        raise ValueError(f"cannot read the known-bad list {path}: {exc.strerror}") from None
    return frozenset(addresses), networks


class Annotator:
    """Puts every finding of a packet in its ``anomaly`` list (before the display filter runs)."""

    def __init__(self, bad_list: str | None = None) -> None:
        self.bad_addresses: frozenset = frozenset()
        self.bad_networks: list = []
        if bad_list:
            self.bad_addresses, self.bad_networks = load_bad_list(bad_list)
        self._cache: dict[str, bool] = {}

    def annotate(self, fields: dict[str, Any]) -> None:
        found = fields.get("anomaly")
        if isinstance(found, dict):
            found = [found]
        elif not isinstance(found, list):
            found = []
        http = fields.get("http")
        tcp = fields.get("tcp")
        if isinstance(http, dict) and "method" in http and isinstance(tcp, dict):
            port = tcp.get("dstport")
            if port not in HTTP_PORTS:
                found.append({"kind": "cleartext_http_unusual_port", "protocol": "http", "port": port})
        if self.bad_addresses or self.bad_networks:
            ip = fields.get("ip") or fields.get("ipv6")
            if isinstance(ip, dict):
                for role in ("dst", "src"):
                    addr = ip.get(role)
                    if isinstance(addr, str) and self._bad(addr):
                        found.append({"kind": "known_bad_address", "address": addr, "direction": role})
        if found:
            fields["anomaly"] = found
        elif "anomaly" in fields:
            del fields["anomaly"]

    def _bad(self, addr: str) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr.split("%", 1)[0])
            except ValueError:
                hit = False
            else:
                hit = ip in self.bad_addresses or any(ip in net for net in self.bad_networks)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[addr] = hit
        return hit


class FindingsReport:
    """`read --findings`: one line (or JSON object) per finding instead of per packet."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.not_shown = 0

    def add(self, fields: dict[str, Any], _l4: Any = None) -> None:
        found = fields.get("anomaly")
        if not found:
            return
        ip = fields.get("ip") or fields.get("ipv6") or {}
        l4 = fields.get("tcp") or fields.get("udp") or {}
        for item in found if isinstance(found, list) else [found]:
            if len(self.rows) >= MAX_SHOWN:
                self.not_shown += 1
                continue
            row = {
                "frame": fields["frame"]["number"],
                "ts": fields["frame"]["time_epoch"],
                "src": ip.get("src"),
                "sport": l4.get("srcport"),
                "dst": ip.get("dst"),
                "dport": l4.get("dstport"),
                **item,
            }
            self.rows.append(row)

    def write(self, out: TextIO, *, as_json: bool = False) -> None:
        for row in self.rows:
            if as_json:
                out.write(json.dumps(row) + "\n")
                continue
            extra = " ".join(
                f"{k}={safe(str(v))}"
                for k, v in row.items()
                if k not in ("frame", "ts", "src", "sport", "dst", "dport", "kind")
            )
            out.write(
                f"{row['frame']:>7} {row['kind']:<28} {safe(str(row['src']))}:{row['sport']} -> "
                f"{safe(str(row['dst']))}:{row['dport']} {extra}\n"
            )
        if self.not_shown:
            out.write(f"... {self.not_shown} more findings not shown\n")
