"""EVE JSON output (``--eve-log FILE``): one JSON line per event, as Suricata writes them.

Event types: ``flow`` (when a flow ends), ``dns``, ``tls``, ``http``, ``quic`` (once per flow,
when it ends or has lasted ``APP_EVENT_DELAY``, with the facts seen by then) and ``alert``. Field names follow
Suricata's EVE where the two overlap (``timestamp``, ``flow_id``, ``src_ip``, ``src_port``,
``dest_ip``, ``dest_port``, ``proto``, ``app_proto``, ``community_id``, ``flow.*``,
``dns.rrname``, ``tls.sni``, ``tls.ja3.hash``, ``tls.ja4``, ``http.hostname``, ``http.url``,
``alert.signature``, ...); what pktscope adds is under ``process`` (the local program:
pid, exe, name, user, cmdline, entity) and ``pktscope`` (destination label, GeoIP).

``flow_id`` is a 51-bit number derived from the flow's 5-tuple and first packet time, the same
on every event of the flow and on every replay of the same capture. ``src`` is the flow's
initiator on every event. An ICMP flow's ``community_id`` uses the type and code of its first
packet (the flow-tracker keeps them as the app facts ``icmp.type``/``icmp.code``), and its events
carry ``icmp_type``/``icmp_code`` as Suricata's do.

SIGHUP makes the detector reopen the file (for logrotate's ``postrotate``); the writer never
blocks the pipeline on anything but the local file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from services.detector.live_store import (
    _APP,
    _BIN,
    _BOUT,
    _DPORT,
    _DST,
    _EV,
    _FIRST,
    _LAST,
    _PIN,
    _POUT,
    _PROTO,
    _REASON,
    _ROW_LEN,
    _SPORT,
    _SRC,
    _STATE,
    _TS,
    as_row,
    conn_key,
    process_facts,
)
from shared.community_id import community_id
from shared.flowevents import EV_END, EV_START

log = logging.getLogger(__name__)

# Application events are written when the flow ends (its facts complete: the DNS answer, the
# TLS server hello), or once it has lasted this long (packet seconds), so a long session shows
# while it runs.
APP_EVENT_DELAY = 10.0
MAX_FLOWS = 200_000  # flows whose ids and logged protocols are remembered (oldest forgotten)
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP", 47: "GRE"}
APP_TYPES = ("dns", "tls", "http", "quic")
# Suricata severity: 1 is the highest
SEVERITY = {"critical": 1, "warning": 2, "notice": 3, "info": 4}
SIGNATURE_IDS = {  # stable numbers per alert kind, for SIEM rules keyed on signature_id
    "new_process_egress": 9_000_001,
    "new_process_dest": 9_000_002,
    "new_geo": 9_000_003,
    "volume_spike": 9_000_004,
    "identity_change": 9_000_005,
}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TLS_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
END_REASON = {"idle": "timeout", "fin": "timeout", "rst": "timeout", "evicted": "forced"}


_SECONDS: dict[int, str] = {}  # whole second -> its "YYYY-mm-ddTHH:MM:SS" text (bounded below)


def eve_time(ts: float) -> str:
    """Suricata's timestamp form: 2009-11-24T21:27:09.534255+0000.

    The second's text is cached: strftime on every call was 1.0 of the 2.7 CPU s (profiled) the
    writer took for sv-merged.pcap's 32k events.
    """
    try:
        sec = int(ts)
        text = _SECONDS.get(sec)
        if text is None:
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            text = _SECONDS[sec] = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{text}.{int((ts - sec) * 1_000_000):06d}+0000"
    except (OverflowError, OSError, ValueError):
        return "1970-01-01T00:00:00.000000+0000"


def flow_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") & ((1 << 51) - 1)


def _cid(proto: int, src: str, dst: str, sport: int, dport: int) -> str:
    try:
        return community_id(proto, src, dst, sport, dport)
    except (ValueError, TypeError):
        return ""


def _dns(app: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"version": 2}
    answers = app.get("dns.answers")
    response = bool(answers) or "dns.rcode" in app
    out["type"] = "answer" if response else "query"
    if "dns.id" in app:
        out["id"] = app["dns.id"]
    queries = app.get("dns.queries")
    if isinstance(queries, list) and queries and isinstance(queries[0], (list, tuple)) and queries[0]:
        out["rrname"] = str(queries[0][0])
        if len(queries[0]) > 1:
            out["rrtype"] = str(queries[0][1])
    elif app.get("dns.query"):
        out["rrname"] = str(app["dns.query"])
    if app.get("dns.qtype"):
        out["rrtype"] = str(app["dns.qtype"])
    if "dns.rcode" in app:
        out["rcode"] = RCODES.get(app["dns.rcode"], str(app["dns.rcode"]))
    rdata = app.get("dns.rdata")
    if isinstance(rdata, list) and rdata:
        rows_: list[dict[str, Any]] = []
        for item in rdata:
            rtype, _, data = str(item).partition(" ")
            rows_.append({"rrname": out.get("rrname", ""), "rrtype": rtype, "rdata": data})
        out["answers"] = rows_
    if isinstance(answers, list):
        rows = []
        for ans in answers:
            if isinstance(ans, (list, tuple)) and len(ans) >= 4:
                rows.append(
                    {"rrname": str(ans[0]), "rrtype": str(ans[1]), "ttl": ans[2], "rdata": str(ans[3])}
                )
            elif isinstance(ans, dict):
                rows.append(
                    {
                        k2: ans.get(k1)
                        for k1, k2 in (
                            ("name", "rrname"),
                            ("type", "rrtype"),
                            ("ttl", "ttl"),
                            ("data", "rdata"),
                        )
                    }
                )
        if rows:
            out["answers"] = rows
    return out


def _fingerprint(app: dict, prefix: str, name: str) -> dict[str, Any] | None:
    text, digest = app.get(f"{prefix}.{name}"), app.get(f"{prefix}.{name}_hash")
    if not text and not digest:
        return None
    out = {}
    if digest:
        out["hash"] = str(digest)
    if text:
        out["string"] = str(text)
    return out


def _tls(app: dict, prefix: str = "tls") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in (
        ("sni", "sni"),
        ("version", "version"),
        ("negotiated_version", "version"),
        ("cert.subject", "subject"),
        ("cert.issuer", "issuerdn"),
        ("ja4", "ja4"),
    ):
        value = app.get(f"{prefix}.{ours}")
        if value not in (None, "", []):
            out[theirs] = value
    for name in ("ja3", "ja3s"):
        fp = _fingerprint(app, prefix, name)
        if fp:
            out[name] = fp
    for field in ("version", "negotiated_version"):
        if isinstance(app.get(f"{prefix}.{field}"), int) and prefix == "tls":
            out["version"] = TLS_VERSIONS.get(app[f"{prefix}.{field}"], "UNDETERMINED")
    alpn = app.get(f"{prefix}.alpn")
    if alpn:
        flat: list[str] = []
        for item in alpn if isinstance(alpn, list) else [alpn]:
            flat.extend(str(x) for x in item) if isinstance(item, list) else flat.append(str(item))
        out["client_alpns"] = flat
    if app.get(f"{prefix}.alpn_selected"):
        out["server_alpn"] = app[f"{prefix}.alpn_selected"]
    return out


def _http(app: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in (
        ("http.host", "hostname"),
        ("http.uri", "url"),
        ("http.method", "http_method"),
        ("http.user_agent", "http_user_agent"),
        ("http.content_type", "http_content_type"),
        ("http.status", "status"),
        ("http.version", "protocol"),
    ):
        value = app.get(ours)
        if value not in (None, ""):
            out[theirs] = value
    return out


def _quic(app: dict) -> dict[str, Any]:
    out = _tls(app, "quic")
    if "quic.version" in app:
        out["version"] = app["quic.version"]
    return out


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # one encoder, not one per line
_BUILD = {"dns": _dns, "tls": _tls, "http": _http, "quic": _quic}


def _icmp_of(row: tuple) -> tuple[int, int] | None:
    """(type, code) of an ICMP/ICMPv6 flow's first packet, as the flow-tracker keeps them."""
    if row[_PROTO] not in (1, 58):
        return None
    app = row[_APP]
    if not isinstance(app, dict):
        return None
    t, c = app.get("icmp.type"), app.get("icmp.code")
    if type(t) is int and type(c) is int and 0 <= t <= 255 and 0 <= c <= 255:
        return t, c
    return None


def _plain(text: str) -> bool:
    """True when ``text`` goes into a JSON string as it is (printable ASCII, no quote or backslash)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def app_types(app: Any) -> list[str]:
    if not isinstance(app, dict) or not app:
        return []
    found = set()
    for key in app:
        head = key.split(".", 1)[0] if isinstance(key, str) else ""
        if head in _BUILD:
            found.add(head)
    return [t for t in APP_TYPES if t in found]


class EveWriter:
    """Turns the detector's flow events and alerts into EVE lines in one file."""

    def __init__(self, path: str, label_of=None) -> None:
        self.path = path
        self.label_of = label_of
        self.f = self._open()
        self.flows: OrderedDict[tuple, list] = (
            OrderedDict()
        )  # (5-tuple, first) -> [flow_id, community_id, logged]
        self.by_tuple: dict[tuple, int] = {}  # 5-tuple -> flow_id of its latest flow (for alerts)
        self.reopen_wanted = False
        self.counts: dict[str, int] = {}
        self.errors = 0

    def _open(self):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the writer

    # --- lifecycle ---------------------------------------------------------------------------------
    def request_reopen(self, *_args) -> None:
        """SIGHUP handler: only sets a flag; the loop reopens between frames."""
        self.reopen_wanted = True

    def maybe_reopen(self) -> None:
        if self.reopen_wanted:
            self.reopen_wanted = False
            try:
                self.f.close()
                self.f = self._open()
                log.info("eve: reopened %s", self.path)
            except OSError as exc:
                self.errors += 1
                log.error("eve: cannot reopen %s: %s", self.path, exc)

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError:
            self.errors += 1

    def close(self) -> None:
        self.flush()
        self.f.close()

    def _write(self, event: dict) -> None:
        try:
            self.f.write(_encode(event) + "\n")
        except (OSError, ValueError):
            self.errors += 1
            return
        kind = event["event_type"]
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # --- events ------------------------------------------------------------------------------------
    def _state(self, row: tuple) -> tuple[tuple, list]:
        proto, src, dst, sport, dport = row[_PROTO], row[_SRC], row[_DST], row[_SPORT], row[_DPORT]
        key = (proto, src, sport, dst, dport, row[_FIRST])
        state = self.flows.get(key)
        if state is None:
            icmp = _icmp_of(row)
            if icmp is not None:  # Community ID: an ICMP flow's "ports" are its type and code
                sport, dport = icmp
            state = [flow_id(conn_key(row)), _cid(proto, src, dst, sport or 0, dport or 0), set()]
            self.flows[key] = state
            if len(self.by_tuple) >= MAX_FLOWS:
                self.by_tuple.clear()
            self.by_tuple[(proto, src, sport, dst, dport)] = state[0]
            if len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        return key, state

    def _head(self, row: tuple, state: list, ts: float, kind: str, flow: Any) -> dict[str, Any]:
        proto = row[_PROTO]
        event: dict[str, Any] = {
            "timestamp": eve_time(ts),
            "flow_id": state[0],
            "event_type": kind,
            "src_ip": row[_SRC],
            "src_port": row[_SPORT],
            "dest_ip": row[_DST],
            "dest_port": row[_DPORT],
            "proto": PROTO_NAMES.get(proto, str(proto)),
            "community_id": state[1],
        }
        types = app_types(row[_APP])
        if types:
            event["app_proto"] = (
                "http2" if types[0] == "http" and row[_APP].get("http.version") == "2" else types[0]
            )
        icmp = _icmp_of(row)
        if icmp is not None:
            event["icmp_type"], event["icmp_code"] = icmp
        if flow is not None:
            proc = process_facts(flow.proc)
            proc["entity"] = flow.entity
            event["process"] = proc
            extra: dict[str, Any] = {}
            if flow.cc:
                extra["country"] = flow.cc
            if flow.asn:
                extra["asn"] = flow.asn
            if flow.org:
                extra["as_org"] = flow.org
            if extra:
                event["pktscope"] = extra
        return event

    def observe(self, raw: Any, flow: Any) -> None:
        row = raw if type(raw) is tuple and len(raw) == _ROW_LEN else as_row(raw)
        if row is None:
            return
        app = row[_APP]
        ended = row[_EV] == EV_END
        if not ended and (not app or row[_TS] - (row[_FIRST] or 0) < APP_EVENT_DELAY):
            if row[_EV] == EV_START:
                self._state(row)  # its id, for the alerts its first event may raise
            return  # nothing to log yet: the common case, kept cheap
        key, state = self._state(row)
        logged = state[2]
        for kind in app_types(app):
            if kind in logged:
                continue
            logged.add(kind)
            event = self._head(row, state, float(row[_TS]), kind, flow)
            event[kind] = _BUILD[kind](app)
            self._write(event)
        if ended:
            self._flow_event(row, state, flow)
            self.flows.pop(key, None)

    def _flow_event(self, row: tuple, state: list, flow: Any) -> None:
        if flow is None and self._flow_line(row, state):
            return
        first, last = float(row[_FIRST] or row[_TS]), float(row[_LAST] or row[_TS])
        event = self._head(row, state, first, "flow", flow)
        reason = row[_REASON] or ""
        info: dict[str, Any] = {
            "pkts_toserver": row[_POUT] or 0,
            "pkts_toclient": row[_PIN] or 0,
            "bytes_toserver": row[_BOUT] or 0,
            "bytes_toclient": row[_BIN] or 0,
            "start": event["timestamp"],
            "end": eve_time(last),
            "age": int(max(0.0, last - first)),
            "state": "closed" if reason in ("fin", "rst") else "established" if row[_PIN] else "new",
            "reason": END_REASON.get(reason, "shutdown"),
            "end_reason": reason,
        }
        event["flow"] = info
        if row[_PROTO] == 6 and row[_STATE]:
            event["tcp"] = {"state": str(row[_STATE]).lower()}
        self._write(event)

    def _flow_line(self, row: tuple, state: list) -> bool:
        """The flow event of a flow without process facts, written from a template.

        Hand-written on a measured hot path: flow events are 11k of sv-merged.pcap's 13k lines,
        and building their maps and encoding them was about half of the writer's 0.27 CPU s.
        The output is what ``_head`` + ``_flow_event`` + json give (tests/test_eve.py compares
        them); anything that would need escaping, or is not a plain number, takes that path.
        """
        src, dst, tcp_state, reason = row[_SRC], row[_DST], row[_STATE] or "", row[_REASON] or ""
        if not (
            type(row[_SPORT]) is int
            and type(row[_DPORT]) is int
            and type(row[_POUT]) is int
            and type(row[_PIN]) is int
            and type(row[_BOUT]) is int
            and type(row[_BIN]) is int
            and type(row[_PROTO]) is int
            and _plain(f"{src}{dst}{tcp_state}{reason}")
        ):
            return False
        try:
            first, last = float(row[_FIRST] or row[_TS]), float(row[_LAST] or row[_TS])
        except (TypeError, ValueError):
            return False
        proto = row[_PROTO]
        types = app_types(row[_APP])
        app = ""
        if types:
            name = "http2" if types[0] == "http" and row[_APP].get("http.version") == "2" else types[0]
            app = f',"app_proto":"{name}"'
        start = eve_time(first)
        flow_state = "closed" if reason in ("fin", "rst") else "established" if row[_PIN] else "new"
        tcp = f',"tcp":{{"state":"{str(tcp_state).lower()}"}}' if proto == 6 and tcp_state else ""
        icmp = _icmp_of(row)
        if icmp is not None:
            app += f',"icmp_type":{icmp[0]},"icmp_code":{icmp[1]}'
        line = (
            f'{{"timestamp":"{start}","flow_id":{state[0]},"event_type":"flow","src_ip":"{src}",'
            f'"src_port":{row[_SPORT]},"dest_ip":"{dst}","dest_port":{row[_DPORT]},'
            f'"proto":"{PROTO_NAMES.get(proto, str(proto))}","community_id":"{state[1]}"{app},'
            f'"flow":{{"pkts_toserver":{row[_POUT]},"pkts_toclient":{row[_PIN]},'
            f'"bytes_toserver":{row[_BOUT]},"bytes_toclient":{row[_BIN]},"start":"{start}",'
            f'"end":"{eve_time(last)}","age":{int(max(0.0, last - first))},"state":"{flow_state}",'
            f'"reason":"{END_REASON.get(reason, "shutdown")}","end_reason":"{reason}"}}{tcp}}}\n'
        )
        try:
            self.f.write(line)
        except (OSError, ValueError):
            self.errors += 1
            return True
        self.counts["flow"] = self.counts.get("flow", 0) + 1
        return True

    def alert(self, alert: dict) -> None:
        flow = (alert.get("detail") or {}).get("flow") or {}
        ts = float(alert.get("ts") or time.time())
        event: dict[str, Any] = {"timestamp": eve_time(ts), "event_type": "alert"}
        try:
            tup = (int(flow["proto"]), flow["src"], int(flow["sport"]), flow["dst"], int(flow["dport"]))
        except (KeyError, TypeError, ValueError):
            tup = None
        if tup is not None:
            known = self.by_tuple.get(tup)
            event["flow_id"] = known if known is not None else flow_id("|".join(map(str, tup)))
            event.update(
                src_ip=tup[1],
                src_port=tup[2],
                dest_ip=tup[3],
                dest_port=tup[4],
                proto=PROTO_NAMES.get(tup[0], str(tup[0])),
                community_id=_cid(tup[0], tup[1], tup[3], tup[2], tup[4]),
            )
        kind = str(alert.get("kind", ""))
        event["alert"] = {
            "action": "allowed",
            "gid": 1,
            "signature_id": SIGNATURE_IDS.get(kind, 9_000_000),
            "rev": 1,
            "signature": alert.get("title", ""),
            "category": kind,
            "severity": SEVERITY.get(str(alert.get("severity")), 3),
            "metadata": {"pktscope_id": [str(alert.get("id", ""))], "entity": [alert.get("entity", "")]},
        }
        detail = alert.get("detail") or {}
        proc = {k: detail[k] for k in ("pid", "exe", "process", "username", "cmdline") if k in detail}
        if proc:
            if "process" in proc:
                proc["name"] = proc.pop("process")
            if "username" in proc:
                proc["user"] = proc.pop("username")
            proc["entity"] = alert.get("entity", "")
            event["process"] = proc
        if alert.get("destination"):
            event["pktscope"] = {"destination": alert["destination"], "alert_id": str(alert.get("id", ""))}
        self._write(event)
