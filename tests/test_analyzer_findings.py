"""Cleartext-credential findings: every kind in the clear is flagged (user name, no secret),
the same logins inside TLS are not, and the pipeline raises `cleartext_credential` alerts that
hold the user name and no password, anywhere (Redis, logs, flow log, output)."""

from __future__ import annotations

import base64
import io
import json
import socket
from pathlib import Path

import dpkt
import redis

from services.cli.findings import Annotator, FindingsReport
from services.cli.read import read_capture
from shared.redis_server import start_redis_server
from tests.pipeline_helpers import pktscope

CLIENT = "10.1.2.3"  # a local (RFC 1918) address: its flows are outbound
S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH


def _seg(src, dst, sport, dport, flags, seq, ack, payload=b""):
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=65535, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=tcp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02", type=0x0800, data=ip)
    return bytes(eth)


def conversation(server: str, sport: int, dport: int, t0: float, messages: list[tuple[bool, bytes]]) -> list:
    """A TCP connection: handshake, each (from_client, bytes) as its own segment, FINs."""
    c, s = 1000, 50000
    t = t0
    out = [(t, _seg(CLIENT, server, sport, dport, S, c, 0))]
    out.append((t + 0.001, _seg(server, CLIENT, dport, sport, S | A, s, c + 1)))
    out.append((t + 0.002, _seg(CLIENT, server, sport, dport, A, c + 1, s + 1)))
    c, s, t = c + 1, s + 1, t + 0.002
    for from_client, data in messages:
        t += 0.001
        if from_client:
            out.append((t, _seg(CLIENT, server, sport, dport, A | P, c, s, data)))
            c += len(data)
        else:
            out.append((t, _seg(server, CLIENT, dport, sport, A | P, s, c, data)))
            s += len(data)
    out.append((t + 0.001, _seg(CLIENT, server, sport, dport, F | A, c, s)))
    out.append((t + 0.002, _seg(server, CLIENT, dport, sport, F | A, s, c + 1)))
    out.append((t + 0.003, _seg(CLIENT, server, sport, dport, A, c + 1, s + 1)))
    return out


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# (protocol, user, secret, server port, messages)
CASES = [
    (
        "http-basic",
        "alice",
        "S3cretBasic!",
        80,
        [
            (
                True,
                b"GET / HTTP/1.1\r\nHost: a.example\r\nAuthorization: Basic "
                + b64(b"alice:S3cretBasic!")
                + b"\r\n\r\n",
            ),
            (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    ),
    (
        "http-digest",
        "bob",
        "S3cretDigestResponse",
        8080,
        [
            (
                True,
                b'GET /x HTTP/1.1\r\nHost: b.example\r\nAuthorization: Digest username="bob", realm="r", '
                b'nonce="n1", uri="/x", response="S3cretDigestResponse"\r\n\r\n',
            ),
            (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    ),
    (
        "ftp",
        "carol",
        "S3cretFtp!",
        21,
        [
            (False, b"220 ftp ready\r\n"),
            (True, b"USER carol\r\n"),
            (False, b"331 password?\r\n"),
            (True, b"PASS S3cretFtp!\r\n"),
            (False, b"230 ok\r\n"),
        ],
    ),
    (
        "pop3",
        "dave",
        "S3cretPop!",
        110,
        [
            (False, b"+OK pop ready\r\n"),
            (True, b"USER dave\r\n"),
            (False, b"+OK\r\n"),
            (True, b"PASS S3cretPop!\r\n"),
            (False, b"+OK\r\n"),
        ],
    ),
    (
        "imap",
        "erin",
        "S3cretImap!",
        143,
        [(False, b"* OK imap ready\r\n"), (True, b'a1 LOGIN erin "S3cretImap!"\r\n'), (False, b"a1 OK\r\n")],
    ),
    (
        "smtp",
        "frank",
        "S3cretSmtpPlain!",
        587,
        [
            (False, b"220 mx ready\r\n"),
            (True, b"EHLO me\r\n"),
            (False, b"250 AUTH PLAIN LOGIN\r\n"),
            (True, b"AUTH PLAIN " + b64(b"\0frank\0S3cretSmtpPlain!") + b"\r\n"),
            (False, b"235 ok\r\n"),
        ],
    ),
    (
        "smtp",
        "grace",
        "S3cretSmtpLogin!",
        25,
        [
            (False, b"220 mx ready\r\n"),
            (True, b"AUTH LOGIN\r\n"),
            (False, b"334 VXNlcm5hbWU6\r\n"),
            (True, b64(b"grace") + b"\r\n"),
            (False, b"334 UGFzc3dvcmQ6\r\n"),
            (True, b64(b"S3cretSmtpLogin!") + b"\r\n"),
            (False, b"235 ok\r\n"),
        ],
    ),
    (
        "telnet",
        "hank",
        "S3cretTelnet!",
        23,
        [
            (False, b"\xff\xfd\x18\xff\xfb\x01Ubuntu\r\nlogin: "),
            (True, b"\xff\xfc\x18"),
            *[(True, bytes([ch])) for ch in b"hank"],
            (True, b"\r\n"),
            (False, b"Password: "),
            (True, b"S3cretTelnet!\r\n"),
            (False, b"Welcome\r\n$ "),
        ],
    ),
]
SECRETS = [case[2] for case in CASES]


def tls_wrapped(messages: list[tuple[bool, bytes]]) -> list[tuple[bool, bytes]]:
    """The same exchange as TLS would carry it: a handshake record, then every message in an
    application-data record (left readable here, to prove that TLS is never read for logins)."""
    hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"
    out = [(True, hello), (False, b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00")]
    for from_client, data in messages:
        out.append((from_client, b"\x17\x03\x03" + len(data).to_bytes(2, "big") + data))
    return out


def write(path: Path, conversations: list[list]) -> Path:
    packets = sorted((p for conv in conversations for p in conv), key=lambda p: p[0])
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for ts, data in packets:
            w.writepkt(data, ts=ts)
    return path


def cleartext_capture(tmp: Path) -> Path:
    convs = [
        conversation(f"198.51.100.{i + 1}", 40000 + i, port, 1_700_000_000 + i, msgs)
        for i, (_p, _u, _s, port, msgs) in enumerate(CASES)
    ]
    return write(tmp / "cleartext.pcap", convs)


def tls_capture(tmp: Path) -> Path:
    convs = []
    for i, (_p, _u, _s, port, msgs) in enumerate(CASES):
        convs.append(
            conversation(f"198.51.100.{i + 1}", 41000 + i, port, 1_700_000_100 + i, tls_wrapped(msgs))
        )
    # STARTTLS: the login after the switch is not read even when a capture shows it readable
    starttls = [
        (False, b"220 mx ready\r\n"),
        (True, b"EHLO me\r\n"),
        (False, b"250 STARTTLS\r\n"),
        (True, b"STARTTLS\r\n"),
        (False, b"220 go ahead\r\n"),
        (True, b"AUTH PLAIN " + b64(b"\0frank\0S3cretSmtpPlain!") + b"\r\n"),
    ]
    convs.append(conversation("198.51.100.77", 42000, 587, 1_700_000_200, starttls))
    return write(tmp / "tls.pcap", convs)


def _read(path: Path, **kw) -> str:
    out = io.StringIO()
    read_capture(str(path), out, **kw)
    return out.getvalue()


def test_scanner_and_read_flag_only_cleartext(tmp_path):
    clear, tls = cleartext_capture(tmp_path), tls_capture(tmp_path)
    flagged = [
        json.loads(line)
        for line in _read(clear, as_json=True, expr='anomaly.kind == "cleartext_credential"').splitlines()
    ]
    found = sorted({(a["protocol"], a["user"]) for p in flagged for a in p["anomaly"]})
    assert found == sorted({(proto, user) for proto, user, *_ in CASES})
    assert _read(tls, as_json=True, expr="anomaly") == ""
    everything = _read(clear, as_json=True) + _read(tls, as_json=True) + _read(clear) + _read(tls)
    report = FindingsReport()
    read_capture(str(clear), io.StringIO(), extras=[report])
    listing = io.StringIO()
    report.write(listing, as_json=True)
    assert len(listing.getvalue().splitlines()) == len(CASES)
    for secret in SECRETS:
        for text in (everything, listing.getvalue()):
            assert secret not in text
            assert b64(secret.encode()).decode() not in text


def test_unusual_http_port_and_known_bad_list(tmp_path):
    get = [(True, b"GET /x HTTP/1.1\r\nHost: c.example\r\n\r\n"), (False, b"HTTP/1.1 204 No Content\r\n\r\n")]
    path = write(
        tmp_path / "http.pcap",
        [
            conversation("203.0.113.9", 40001, 8765, 1_700_000_000, get),  # odd port
            conversation("203.0.113.10", 40002, 80, 1_700_000_010, get),  # usual port
            conversation("203.0.113.11", 40003, 8765, 1_700_000_020, tls_wrapped(get)),  # TLS: not seen
        ],
    )
    odd = [
        json.loads(x)
        for x in _read(path, as_json=True, expr='anomaly.kind == "cleartext_http_unusual_port"').splitlines()
    ]
    assert len(odd) == 1 and odd[0]["tcp"]["dstport"] == 8765 and odd[0]["http"]["method"] == "GET"
    bad = tmp_path / "bad.txt"
    bad.write_text("# known bad\n203.0.113.8/31  # a pair\n2001:db8::1\n")
    hits = [
        json.loads(x)
        for x in _read(
            path, as_json=True, expr='anomaly.kind == "known_bad_address"', bad_list=str(bad)
        ).splitlines()
    ]
    assert hits and {h["ip"]["dst"] if h["ip"]["dst"] != CLIENT else h["ip"]["src"] for h in hits} == {
        "203.0.113.9"
    }
    bad.write_text("203.0.113.300\n")
    try:
        Annotator(str(bad))
    except ValueError as exc:
        assert "bad.txt:1" in str(exc)
    else:
        raise AssertionError("a bad list entry was accepted")


def _redis_contents(state_dir: Path, sock_dir: Path) -> str:
    """Every key and value of the pipeline's saved Redis data, as one text."""
    proc, url = start_redis_server(sock_dir / "r.sock", state_dir, "pktscope.rdb", aof=True)  # what a start loads
    try:
        r = redis.Redis.from_url(url)
        parts = []
        for key in r.scan_iter(count=1000):
            kind = r.type(key).decode()
            if kind == "string":
                value = r.get(key)
            elif kind == "hash":
                value = r.hgetall(key)
            elif kind == "set":
                value = r.smembers(key)
            elif kind == "zset":
                value = r.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = r.lrange(key, 0, -1)
            elif kind == "stream":
                value = r.xrange(key)
            else:
                value = r.dump(key)
            parts.append(f"{key!r} {value!r}")
        r.close()
        return "\n".join(parts)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_pipeline_alerts_with_user_and_never_the_secret(short_tmp):
    clear = cleartext_capture(short_tmp)
    tls = tls_capture(short_tmp)
    run_dir, state_dir, flow_log = short_tmp / "run", short_tmp / "state", short_tmp / "flows.jsonl"
    for capture in (clear, tls):
        pktscope(
            "run",
            "--read",
            str(capture),
            "--run-dir",
            str(run_dir),
            "--state-dir",
            str(state_dir),
            "--flow-log",
            str(flow_log),
            "--json",
            timeout=300,
        )  # the default 7-day learning window: these alerts are raised all the same
    listed = pktscope("alerts", "list", "--json", "--count", "1000", "--run-dir", str(run_dir)).stdout
    alerts = [a for a in map(json.loads, listed.splitlines()) if a["kind"] == "cleartext_credential"]
    got = sorted((a["detail"]["protocol"], a["detail"]["user"]) for a in alerts)
    assert got == sorted((proto, user) for proto, user, *_ in CASES)
    assert all(a["severity"] == "warning" and a["detail"]["user"] in a["title"] for a in alerts)
    texts = [listed, flow_log.read_text(), _redis_contents(state_dir, short_tmp)]
    assert "cleartext_credential" in texts[2]  # the saved data was read (its alert stream is in it)
    texts += [
        p.read_text(errors="replace")
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in (".log", ".json", ".conf", "")
    ]
    for secret in SECRETS:
        for text in texts:
            assert secret not in text
            assert b64(secret.encode()).decode() not in text
