"""`pktscope read`: human and JSON output on real captures, filters, --count, --flows, errors, escaping."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from conftest import PCAPS, ROOT

DNS_PCAP = PCAPS / "cond-log-dns-dig" / "input.pcap"
HTTP_PCAP = PCAPS / "base64-issue-5223" / "input.pcap"
TLS_PCAP = PCAPS / "bug-2646-01" / "input.pcap"
DNS_TUNNEL_PCAP = PCAPS / "dns" / "bug-1158" / "input.pcap"
FLOW_PCAPS = [TLS_PCAP, DNS_TUNNEL_PCAP, HTTP_PCAP, PCAPS / "decode-sll2-02" / "input.pcap"]
RAW_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # anything but \t and \n


def read(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.read", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=120,
    )


def packet_count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in dpkt.pcap.Reader(f))


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


# --- human output ------------------------------------------------------------------------------


def test_human_output_one_line_per_packet():
    proc = read(TLS_PCAP)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == packet_count(TLS_PCAP) == 29
    first = lines[0].split()
    assert first[:5] == ["1", "0.000000", "192.168.0.253", "->", "151.101.36.133"]
    assert first[5] == "TCP" and first[6] == "74"
    assert "49584 -> 443 [SYN]" in lines[0]
    assert "[SYN, ACK]" in lines[1]
    numbers = [int(line.split()[0]) for line in lines]
    assert numbers == list(range(1, 30))


def test_human_output_shows_dns_and_http():
    dns = read(DNS_PCAP).stdout.splitlines()
    assert "DNS" in dns[0] and "Standard query 0x8d32 A www.suricata-ids.org" in dns[0]
    assert "Standard query response 0x8d32" in dns[1] and "A 192.0.78.24" in dns[1]
    http = read(HTTP_PCAP).stdout
    assert re.search(r"HTTP +\d+ GET /\S* HTTP/1\.1 host=foo\.bar", http)


# --- JSON output -------------------------------------------------------------------------------


def test_json_output_is_nested_fields():
    proc = read(DNS_PCAP, "--json")
    assert proc.returncode == 0, proc.stderr
    pkts = json_lines(proc)
    assert [p["frame"]["number"] for p in pkts] == [1, 2]
    query, answer = pkts
    assert query["ip"]["src"] == "10.16.1.11" and query["udp"]["dstport"] == 53
    assert query["dns"]["queries"] == [{"name": "www.suricata-ids.org", "type": "A"}]
    assert query["dns"]["flags"]["response"] is False
    assert {
        "name": "suricata-ids.org",
        "type": "A",
        "ttl": answer["dns"]["answers"][1]["ttl"],
        "data": "192.0.78.24",
    } in answer["dns"]["answers"]
    assert answer["frame"]["time_relative"] > 0


def test_json_carries_http_fields():
    pkts = json_lines(read(HTTP_PCAP, "--json"))
    requests = [p for p in pkts if "http" in p and "method" in p["http"]]
    assert requests and all(p["http"]["host"] == "foo.bar" for p in requests)
    assert {p["http"]["method"] for p in requests} == {"GET"}


# --- --filter and --count ----------------------------------------------------------------------


def test_filter_selects_the_same_packets_as_python():
    everything = json_lines(read(DNS_TUNNEL_PCAP, "--json"))
    expr = 'dns.flags.response == 1 and dns.qry.name contains "connect"'
    chosen = json_lines(read(DNS_TUNNEL_PCAP, "--json", "--filter", expr))
    want = [
        p["frame"]["number"]
        for p in everything
        if "dns" in p
        and p["dns"]["flags"]["response"]
        and any("connect" in q["name"] for q in p["dns"]["queries"])
    ]
    assert want and [p["frame"]["number"] for p in chosen] == want


def test_filter_on_l4_and_app_fields():
    syn = read(TLS_PCAP, "--filter", "tcp.flags.syn == 1 and not tcp.flags.ack == 1").stdout.splitlines()
    assert len(syn) == 1 and syn[0].split()[0] == "1"
    http = json_lines(read(HTTP_PCAP, "--json", "-Y", 'http.host == "foo.bar" && tcp.dstport == 80'))
    assert http and all(p["http"]["host"] == "foo.bar" for p in http)
    none = read(HTTP_PCAP, "--filter", "udp")
    assert none.returncode == 0 and none.stdout == ""


def test_count_stops_after_n_matching_packets():
    proc = read(TLS_PCAP, "--count", "3", "--filter", "tcp.srcport == 443")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 3
    assert all(" 443 -> 49584 " in line for line in lines)
    assert [int(line.split()[0]) for line in lines] == [2, 5, 6]


def test_bad_filter_prints_caret_and_exits_2():
    proc = read(TLS_PCAP, "--filter", "tcp.port == ")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    expr_line = next(i for i, line in enumerate(lines) if line.strip() == "tcp.port ==")
    caret = lines[expr_line + 1]
    assert caret.index("^") - lines[expr_line].index("t") == 12  # under column 13
    assert "column 13: expected a value after '=='" in proc.stderr


def test_bad_filter_caret_with_escaped_characters():
    proc = read(TLS_PCAP, "--filter", 'tls.sni == "\x1b" and tcp.port === 1')
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\\x1b" in proc.stderr
    lines = proc.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if "tls.sni" in line)
    assert lines[i + 1].index("^") == lines[i].index("===")  # caret moved past the escape's width
    assert "unknown operator '==='" in proc.stderr


# --- errors ------------------------------------------------------------------------------------


def test_missing_file_exits_1(short_tmp):
    proc = read(short_tmp / "nope.pcap")
    assert proc.returncode == 1 and "not found" in proc.stderr and proc.stdout == ""
    junk = short_tmp / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    proc = read(junk)
    assert proc.returncode == 1 and "junk.pcap" in proc.stderr


def test_truncated_file_prints_what_it_held_then_fails(short_tmp):
    data = TLS_PCAP.read_bytes()
    # cut inside the 8th record: header 24 bytes, then records of 16 + caplen bytes
    offset, records = 24, 0
    while records < 7:
        caplen = int.from_bytes(data[offset + 8 : offset + 12], "little")
        offset += 16 + caplen
        records += 1
    cut = short_tmp / "cut.pcap"
    cut.write_bytes(data[: offset + 16 + 100])
    proc = read(cut)
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 7
    assert "ends early" in proc.stderr and "truncated" in proc.stderr


# --- escaping of names from the network --------------------------------------------------------


def _eth_ip_tcp(
    src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes
) -> bytes:
    import socket

    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=tcp)
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def _eth_ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    import socket

    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, ttl=64, data=udp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


EVIL_HOST = b"\x1b]0;pwned\x07\x1b[2Jevil\x9b31m.example"


def write_evil_pcap(path: Path) -> None:
    """A TCP handshake + HTTP request whose Host/URI/User-Agent carry terminal escapes, and a DNS query."""
    c, s = "10.0.0.1", "10.0.0.2"
    request = (
        b"GET /\x1b[31mred\xff HTTP/1.1\r\nHost: "
        + EVIL_HOST
        + b"\r\nUser-Agent: \x1b[5mblink\xc3\x28\r\n\r\n"
    )
    qname = b"".join(bytes([len(label)]) + label for label in (b"\x1b[2J", b"evil", b"test")) + b"\0"
    dns_query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    frames = [
        _eth_ip_tcp(c, s, 40000, 80, dpkt.tcp.TH_SYN, 100, 0, b""),
        _eth_ip_tcp(s, c, 80, 40000, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 500, 101, b""),
        _eth_ip_tcp(c, s, 40000, 80, dpkt.tcp.TH_ACK, 101, 501, b""),
        _eth_ip_tcp(c, s, 40000, 80, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, 101, 501, request),
        _eth_ip_udp(c, s, 5555, 53, dns_query),
    ]
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1700000000 + i * 0.01)


def test_control_characters_are_escaped_in_human_output(short_tmp):
    pcap = short_tmp / "evil.pcap"
    write_evil_pcap(pcap)
    proc = read(pcap)
    assert proc.returncode == 0, proc.stderr
    assert not RAW_TERMINAL.search(proc.stdout), repr(proc.stdout)
    assert "\\x1b" in proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 5
    assert "evil" in lines[3] and "HTTP" in lines[3]
    assert "DNS" in lines[4] and "evil.test" in lines[4]


def test_json_output_is_valid_and_escaped_for_hostile_names(short_tmp):
    pcap = short_tmp / "evil.pcap"
    write_evil_pcap(pcap)
    proc = read(pcap, "--json")
    assert proc.returncode == 0, proc.stderr
    assert not RAW_TERMINAL.search(proc.stdout)
    pkts = json_lines(proc)
    http = next(p for p in pkts if "http" in p)
    assert "pwned" in http["http"]["host"] and "evil" in http["http"]["host"]
    flows = json_lines(read(pcap, "--json", "--flows"))
    assert sum(f["pkts_out"] + f["pkts_in"] for f in flows) == 5


def test_filter_finds_hostile_names(short_tmp):
    pcap = short_tmp / "evil.pcap"
    write_evil_pcap(pcap)
    proc = read(pcap, "--json", "--filter", 'http.host matches "pwned" or dns.qry.name contains "evil"')
    assert len(json_lines(proc)) == 2


# --- --flows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pcap", FLOW_PCAPS, ids=lambda p: p.parent.name)
def test_flow_packets_sum_to_ip_packets(pcap):
    pkts = json_lines(read(pcap, "--json"))
    ip_pkts = [p for p in pkts if "ip" in p or "ipv6" in p]
    ip_bytes = sum(p["frame"]["len"] for p in ip_pkts)
    proc = read(pcap, "--json", "--flows")
    assert proc.returncode == 0, proc.stderr
    flows = json_lines(proc)
    assert flows
    assert sum(f["pkts_out"] + f["pkts_in"] for f in flows) == len(ip_pkts)
    assert sum(f["bytes_out"] + f["bytes_in"] for f in flows) == ip_bytes
    for f in flows:
        assert f["first"] <= f["last"] and f["initiator"] == f["src"] and f["pkts_out"] >= 1
    human = read(pcap, "--flows").stdout.splitlines()
    assert len(human) == len(flows)


def test_flow_record_of_a_tcp_connection():
    (flow,) = json_lines(read(TLS_PCAP, "--json", "--flows"))
    assert (flow["proto"], flow["src"], flow["sport"], flow["dst"], flow["dport"]) == (
        6,
        "192.168.0.253",
        49584,
        "151.101.36.133",
        443,
    )
    assert (flow["pkts_out"], flow["pkts_in"]) == (10, 19)
    assert flow["state"] in ("fin", "closed")
    line = read(TLS_PCAP, "--flows").stdout
    assert "192.168.0.253:49584 -> 151.101.36.133:443" in line and "out=10p/" in line


def test_flow_names_from_dns_and_http():
    (flow,) = json_lines(read(DNS_PCAP, "--json", "--flows"))
    assert flow["names"] == ["dns=www.suricata-ids.org"] and flow["state"] == ""
    http_flows = json_lines(read(HTTP_PCAP, "--json", "--flows"))
    assert any("http.host=foo.bar" in f["names"] for f in http_flows)


def test_flows_respect_the_filter():
    flows = json_lines(read(DNS_TUNNEL_PCAP, "--json", "--flows", "--filter", "udp.port == 137"))
    assert flows and all(137 in (f["sport"], f["dport"]) for f in flows)


def test_pktscope_entry_point_runs_read():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "read",
            str(DNS_PCAP),
            "-Y",
            "dns.flags.response == 1",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p["frame"]["number"] for p in json_lines(proc)] == [2]
    bad = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "read", str(DNS_PCAP), "-Y", "dns.id =="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "column 10: expected a value after '=='" in bad.stderr


def test_tls_and_quic_client_hellos():
    tls = read(TLS_PCAP, "-Y", 'tls.sni == "raw.githubusercontent.com"').stdout.splitlines()
    assert len(tls) == 1 and tls[0].split()[0] == "4"
    assert "TLS" in tls[0] and "Client Hello SNI=raw.githubusercontent.com" in tls[0]
    server = read(TLS_PCAP, "-Y", 'tls.cert.san contains "github"').stdout
    assert "Server Hello" in server and "CN=www.github.com" in server
    (flow,) = json_lines(read(TLS_PCAP, "--json", "--flows"))
    assert "tls.sni=raw.githubusercontent.com" in flow["names"]
    quic_pcap = PCAPS / "ja4-quic" / "input.pcap"
    quic = json_lines(read(quic_pcap, "--json", "-Y", 'quic.sni matches "BLOGGER" and udp.dstport == 443'))
    assert quic and all(p["quic"]["sni"] == "www.blogger.com" for p in quic)
    assert "Initial, Client Hello SNI=www.blogger.com" in read(quic_pcap, "-c", "1").stdout
