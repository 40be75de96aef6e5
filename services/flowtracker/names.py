"""Passive names: which name a flow's responder goes by, learned from the traffic itself.

Two sources, in order of trust:

* the flow's own traffic: TLS SNI, QUIC SNI, HTTP Host -- the client said whom it wants;
* DNS answers seen earlier: address -> the name that was asked for (a CNAME chain is
  followed back to the query name), kept for the record's TTL but at least ``min_ttl``.

The DNS cache is driven by packet time, bounded (least recently learned addresses go
first) and answers "as of" a packet time: an entry learned after the asked-for time is not
used, which keeps names identical however the decoders' frames interleave. Names come from
the network: they are cut to DNS length and control characters are escaped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

MAX_NAME = 253
HISTORY = 8  # different answers remembered per address, newest last (for "as of" look-ups)

# Where a flow's own name may come from, best first (lower rank wins).
OWN_NAME_KEYS = (("tls.sni", 0), ("quic.sni", 1), ("http.host", 2))
SRC_DNS = "dns"

# Application facts a flow event carries (bounded): keys with these prefixes, first value wins.
APP_PREFIXES = ("tls.", "quic.", "http.", "ssh.", "anomaly.")
APP_MAX_KEYS = 16
APP_MAX_TEXT = 256
APP_MAX_ITEMS = 8
# field name -> whether flow events carry it: a look-up instead of a str.startswith call on a
# tuple of prefixes (~800 instructions) per field of every packet's app map (callgrind)
_FACT_KEYS: dict[Any, bool] = {}
FACT_KEYS_MAX = 4096

_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}


_TEXTS: dict[bytes, str] = {}  # raw address -> its text: most flows' peers were seen before
TEXTS_MAX = 65536  # addresses come from the network: bounded, emptied when full


def address_text(raw: bytes) -> str:
    """Text of a raw 4/16-byte address, as flow events carry it (ValueError for other lengths).

    Remembered: inet_ntop formats with sprintf, ~3,000 instructions an address, where a look-up
    of bytes whose hash the flow key already computed is ~100 (callgrind, sv-merged); and flows
    of one peer share its text.
    """
    text = _TEXTS.get(raw)
    if text is None:
        text = inet_ntop(AF_INET if len(raw) == 4 else AF_INET6, raw)
        if len(_TEXTS) >= TEXTS_MAX:
            _TEXTS.clear()
        _TEXTS[raw] = text
    return text


def canonical_address(text: str) -> str:
    """The same text ``address_text`` gives, from any spelling of an address (ValueError if none)."""
    family = AF_INET6 if ":" in text else AF_INET
    try:
        return inet_ntop(family, inet_pton(family, text))
    except OSError:
        raise ValueError(f"not an address: {text!r}") from None


def clean_name(raw: Any) -> str:
    """A name safe to store and print: text, lower case, no trailing dot, bounded, no controls."""
    if not isinstance(raw, str):
        return ""
    name = raw[: MAX_NAME + 1].rstrip(".").lower()[:MAX_NAME]
    if not name.isprintable():
        name = name.translate(_CONTROL)[:MAX_NAME]
    return name


def own_name(app: dict) -> tuple[str, str, int] | None:
    """The best name a packet's own app fields give its flow: (name, source, rank)."""
    for key, rank in OWN_NAME_KEYS:
        value = app.get(key)
        if value:
            name = clean_name(value)
            if name:
                return name, key, rank
    return None


def merge_app_facts(facts: dict, app: dict) -> bool:
    """Add the new, bounded app facts of one packet to a flow's facts; True if any was added.

    A DNS flow keeps the first name it asked for as ``dns.query`` (a resolver's flows have no
    other name: the answers name the flows to the addresses they give).
    """
    added = False
    if "dns.queries" in app and "dns.query" not in facts:
        query = _first_query_name(app["dns.queries"]) if len(facts) < APP_MAX_KEYS else ""
        if query:
            facts["dns.query"] = query
            added = True
            qtype = _first_query_type(app["dns.queries"])
            if qtype:
                facts["dns.qtype"] = qtype  # for EVE's dns.rrtype
    if "dns.answers" in app and "dns.rcode" not in facts and len(facts) < APP_MAX_KEYS - 1:
        # the first response's code and answer data, bounded (EVE dns events; issue 13)
        facts["dns.rcode"] = app.get("dns.rcode", 0) if isinstance(app.get("dns.rcode", 0), int) else 0
        facts["dns.rdata"] = _answer_data(app["dns.answers"])
        added = True
    for key, value in app.items():
        if key in facts:
            continue
        fact = _FACT_KEYS.get(key)
        if fact is None:  # the decoder's field names: a few dozen, each tested once
            fact = isinstance(key, str) and key.startswith(APP_PREFIXES)
            if len(_FACT_KEYS) < FACT_KEYS_MAX:
                _FACT_KEYS[key] = fact
        if not fact:
            continue
        if len(facts) >= APP_MAX_KEYS:
            break
        if isinstance(value, str):
            value = value[:APP_MAX_TEXT]
            if not value.isprintable():
                value = value.translate(_CONTROL)[:APP_MAX_TEXT]
        elif isinstance(value, bool | int | float):
            pass
        elif isinstance(value, list | tuple):
            value = [v[:APP_MAX_TEXT] if isinstance(v, str) else v for v in value[:APP_MAX_ITEMS]]
            if not all(isinstance(v, str | int | float | bool) for v in value):
                continue
        else:
            continue
        facts[key] = value
        added = True
    return added


def _answer_fields(ans: Any) -> tuple[str, str, int, str] | None:
    """(name, type, ttl, data) from a list-shaped or map-shaped DNS answer."""
    try:
        if isinstance(ans, dict):
            name, rtype, ttl, data = ans["name"], ans["type"], ans.get("ttl", 0), ans["data"]
        else:
            name, rtype, ttl, data = ans[0], ans[1], ans[2], ans[3]
    except (KeyError, IndexError, TypeError):
        return None
    if not (isinstance(name, str) and isinstance(rtype, str) and isinstance(data, str)):
        return None
    if not isinstance(ttl, int) or ttl < 0:
        ttl = 0
    return name, rtype, ttl, data


def _query_name_iter(queries: Any) -> Iterator[str]:
    """The usable names among a message's questions (at most 16 looked at), in order."""
    if isinstance(queries, list | tuple):
        for q in queries[:16]:
            name = (
                q.get("name")
                if isinstance(q, dict)
                else (q[0] if isinstance(q, list | tuple) and q else None)
            )
            name = clean_name(name)
            if name:
                yield name


def _first_query_type(queries: Any) -> str:
    first = queries[0] if isinstance(queries, list | tuple) and queries else None
    if isinstance(first, list | tuple) and len(first) > 1:
        value = first[1]
    elif isinstance(first, dict):
        value = first.get("type")
    else:
        return ""
    return str(value)[:16] if isinstance(value, str | int) else ""


def _answer_data(answers: Any) -> list[str]:
    """Up to APP_MAX_ITEMS answer records as "TYPE data" text (control characters escaped)."""
    out: list[str] = []
    if not isinstance(answers, list | tuple):
        return out
    for ans in answers[:APP_MAX_ITEMS]:
        fields = _answer_fields(ans)
        if fields is not None:
            text = f"{fields[1]} {fields[3]}"[:APP_MAX_TEXT]
            out.append(text if text.isprintable() else text.translate(_CONTROL))
    return out


def _first_query_name(queries: Any) -> str:
    return next(_query_name_iter(queries), "")


def _query_names(queries: Any) -> set[str]:
    return set(_query_name_iter(queries))


class DnsNames:
    """Address text -> [(learned, expires, name), ...] from DNS answers, as-of look-ups."""

    def __init__(self, max_addresses: int = 65536, min_ttl: float = 300.0, max_ttl: float = 86400.0) -> None:
        self.max_addresses = max_addresses
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.cache: OrderedDict[str, list[tuple[float, float, str]]] = OrderedDict()
        self.learned = 0

    def learn(self, app: dict, ts: float) -> int:
        """Take the A/AAAA answers of one DNS response seen at packet time ``ts``; return how many."""
        answers = app.get("dns.answers")
        if not isinstance(answers, list | tuple) or not answers:
            return 0
        queries = _query_names(app.get("dns.queries"))
        parsed = [a for a in map(_answer_fields, answers[:64]) if a is not None]
        # alias -> the name whose CNAME points at it: walk back from an address's owner to a query
        cname_of: dict[str, str] = {}
        for name, rtype, _ttl, data in parsed:
            if rtype == "CNAME":
                target = clean_name(data)
                if target and target not in cname_of:
                    cname_of[target] = clean_name(name)
        count = 0
        for name, rtype, ttl, data in parsed:
            if rtype != "A" and rtype != "AAAA":
                continue
            owner = clean_name(name)
            hops = 0
            while owner not in queries and owner in cname_of and hops < 16:
                owner = cname_of[owner]
                hops += 1
            try:
                addr = canonical_address(data)
            except ValueError:
                continue
            if owner:
                self._add(addr, owner, ts, ts + min(max(float(ttl), self.min_ttl), self.max_ttl))
                count += 1
        self.learned += count
        return count

    def _add(self, addr: str, name: str, learned: float, expires: float) -> None:
        cache = self.cache
        hist = cache.get(addr)
        if hist is None:
            if len(cache) >= self.max_addresses:
                cache.popitem(last=False)
            cache[addr] = [(learned, expires, name)]
            return
        cache.move_to_end(addr)
        last_learned, last_expires, last_name = hist[-1]
        if name == last_name and last_learned <= learned <= last_expires:
            # The same answer again (a name resolved over and over): extend the entry instead of
            # adding one. Records are taken ahead of the lowest decoder watermark, so repeats
            # learned "later" used to push the entry an earlier event needs out of the history,
            # and whether they had done so depended on how the decoders' frames interleaved.
            if expires > last_expires:
                hist[-1] = (last_learned, expires, name)
            return
        hist.append((learned, expires, name))
        if len(hist) > 1 and hist[-2][0] > learned:
            hist.sort(key=lambda h: h[0])  # stable: same-time answers keep their order
        if len(hist) > HISTORY:
            del hist[0]

    def lookup(self, addr: str, ts: float, since: float | None = None) -> str:
        """The name ``addr`` had at packet time ``ts`` ("" when none was known and fresh).

        With ``since`` (a flow's first packet time), an answer that was fresh at any moment
        between ``since`` and ``ts`` counts too, the newest first: a flow keeps the name its
        peer had while it ran, even if the answer expired before the event that asks (an end
        event an hour later, when periodic updates are off).
        """
        hist = self.cache.get(addr)
        if hist is None:
            return ""
        for learned, expires, name in reversed(hist):
            if learned <= ts:
                if ts < expires:
                    return name
                if since is not None and since < expires:
                    return name
                return ""
        return ""

    def __len__(self) -> int:
        return len(self.cache)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(
    globals(), ("address_text", "canonical_address", "clean_name", "own_name", "merge_app_facts", "DnsNames")
)
