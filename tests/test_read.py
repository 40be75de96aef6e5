"""`pktscope read`: human and JSON output on real captures, filters, --count, --flows, errors, escaping."""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from conftest import PCAPS, ROOT

from services.capture.sources import OfflineSource
from services.cli.read_flows import ReadFlows, flow_line, flow_record, packet_record
from services.cli.text import json_line
from services.decoder.dissect import dissect
from services.decoder.fastpath import decode_batch
from services.decoder.service import load_app_inspector
from services.flowtracker.flowlog import FlowLog, read_flow_log
from services.flowtracker.localaddr import LocalMatcher
from services.flowtracker.service import local_nets
from services.flowtracker.table import FlowTable
from shared.config import PipelineConfig
from shared.records import FRAG_NONE, R_FRAG, R_PAYLEN

DNS_PCAP = PCAPS / "cond-log-dns-dig" / "input.pcap"
HTTP_PCAP = PCAPS / "base64-issue-5223" / "input.pcap"
TLS_PCAP = PCAPS / "bug-2646-01" / "input.pcap"
DNS_TUNNEL_PCAP = PCAPS / "dns" / "bug-1158" / "input.pcap"
DNS_TLS_PCAP = PCAPS / "tls" / "tls13-draft18" / "tls13_draft18.pcap"  # a DNS look-up, then TLS
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
        "a": "192.0.78.24",  # Wireshark's dns.a: the address of an A record
    } in answer["dns"]["answers"]
    assert answer["frame"]["time_relative"] > 0
    assert "_raw" not in query and "_outer" not in query  # filter-only keys stay out of --json


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
    assert all(" 151.101.36.133 -> 192.168.0.253 " in line for line in lines)
    assert [int(line.split()[0]) for line in lines] == [2, 5, 6]
    assert "Server Hello" in lines[2]  # the TLS records of the frame, named as Wireshark does


def test_bad_filter_prints_caret_and_exits_2():
    proc = read(TLS_PCAP, "--filter", "tcp.port == ")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    expr_line = next(i for i, line in enumerate(lines) if line.strip() == "tcp.port ==")
    caret = lines[expr_line + 1]
    assert caret.index("^") - lines[expr_line].index("t") == 12  # under column 13
    assert "column 13: expected a value after '=='" in proc.stderr


def test_bad_filter_caret_with_escaped_characters():
    proc = read(TLS_PCAP, "--filter", 'tls.sni == "\x1b" and tcp.port ==== 1')
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\\x1b" in proc.stderr
    lines = proc.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if "tls.sni" in line)
    assert lines[i + 1].index("^") == lines[i].index("====")  # caret moved past the escape's width
    assert "unknown operator '===='" in proc.stderr


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


def test_flow_output_is_escaped_for_hostile_names(short_tmp):
    pcap = short_tmp / "evil.pcap"
    write_evil_pcap(pcap)
    human = read(pcap, "--flows")
    assert human.returncode == 0, human.stderr
    assert not RAW_TERMINAL.search(human.stdout), repr(human.stdout)
    line = next(x for x in human.stdout.splitlines() if ":80 " in x)
    assert "http.host=" in line and "\\x1b]0;pwned" in line
    proc = read(pcap, "--flows", "--json")
    assert not RAW_TERMINAL.search(proc.stdout)
    tcp = next(f for f in json_lines(proc) if f["proto"] == 6)
    assert "pwned" in tcp["name"] and tcp["names"] == [f"http.host={tcp['name']}"]


def test_flow_line_and_record_escape_what_the_flow_tracker_leaves_raw():
    # the flow-tracker escapes C0 controls in names and facts; C1 controls and bidi overrides
    # reach read_flows as they are, and only `safe` / json_line keep them off the terminal
    hostile = "\x9b31m\u202eevil\x1b]0;t\x07"
    event = {
        "proto": 6,
        "src": "10.0.0.1",
        "sport": 1,
        "dst": "10.0.0.2",
        "dport": 443,
        "outbound": True,
        "first": 5.0,
        "last": 6.5,
        "pkts_out": 2,
        "bytes_out": 120,
        "pkts_in": 1,
        "bytes_in": 60,
        "state": "established",
        "reason": "idle",
        "name": hostile,
        "name_src": "dns",
        "app": {"tls.sni": hostile, "tls.ja4": hostile},
    }
    line = flow_line(event, 4.0)
    assert not RAW_TERMINAL.search(line) and "\u202e" not in line
    assert line.startswith("TCP    10.0.0.1:1 -> 10.0.0.2:443 start=1.000000 dur=1.500000 out=2p/120B")
    assert "tls.sni=\\x9b31m\\u202eevil" in line and " dns=\\x9b31m" in line
    text = json_line(flow_record(event))
    assert not RAW_TERMINAL.search(text) and "\u202e" not in text
    assert json.loads(text)["names"] == [f"tls.sni={hostile}", f"dns={hostile}"]


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
        # the initiator sent no packet when the capture begins with the responder's SYN+ACK
        assert f["first"] <= f["last"] and f["initiator"] == f["src"] and f["pkts_out"] + f["pkts_in"] >= 1
    human = read(pcap, "--flows").stdout.splitlines()
    assert len(human) == len(flows)


def test_flow_record_of_a_tcp_connection():
    # the connection closes with FINs both ways at 7.4 s; the server's three stragglers 7 s later,
    # past the flow-tracker's 5 s closed linger, are a flow of their own, as in the pipeline
    flows = json_lines(read(TLS_PCAP, "--json", "--flows"))
    assert [f["first"] for f in flows] == sorted(f["first"] for f in flows)
    flow, stragglers = flows
    assert (flow["proto"], flow["src"], flow["sport"], flow["dst"], flow["dport"]) == (
        6,
        "192.168.0.253",
        49584,
        "151.101.36.133",
        443,
    )
    assert (flow["pkts_out"], flow["pkts_in"]) == (10, 16)
    assert (flow["state"], flow["reason"], flow["outbound"]) == ("closed", "fin", True)
    assert (flow["name"], flow["name_src"]) == ("raw.githubusercontent.com", "tls.sni")
    assert (stragglers["src"], stragglers["sport"], stragglers["pkts_out"]) == ("151.101.36.133", 443, 3)
    assert (stragglers["state"], stragglers["reason"], stragglers["outbound"]) == ("fin_wait", "eos", False)
    assert flow["pkts_out"] + flow["pkts_in"] + stragglers["pkts_out"] == 29
    lines = read(TLS_PCAP, "--flows").stdout.splitlines()
    assert "192.168.0.253:49584 -> 151.101.36.133:443" in lines[0] and "out=10p/1584B" in lines[0]
    assert " closed tls.sni=raw.githubusercontent.com" in lines[0]
    assert "151.101.36.133:443 -> 192.168.0.253:49584" in lines[1] and " fin_wait" in lines[1]
    assert " irtt=0.016234 retrans=6" in lines[0]  # tshark: tcp.analysis.initial_rtt 0.016234


def test_flow_names_from_dns_and_http():
    (flow,) = json_lines(read(DNS_PCAP, "--json", "--flows"))
    # a flow to the resolver: no SNI/Host, nobody asked DNS for the resolver's own name; it is
    # known by the name it asked for
    assert flow["names"] == ["dns.query=www.suricata-ids.org"]
    assert flow["state"] == "" and flow["reason"] == "eos"
    dns, tls = json_lines(read(DNS_TLS_PCAP, "--json", "--flows"))
    assert (dns["dport"], dns["names"]) == (53, ["dns.query=tls13.crypto.mozilla.org"])
    # the TLS 1.3 flow to the address the DNS answer gave is named from that answer
    assert (tls["dst"], tls["dport"], tls["names"]) == (
        "52.32.149.186",
        443,
        ["dns=tls13.crypto.mozilla.org"],
    )
    assert (tls["name"], tls["name_src"]) == ("tls13.crypto.mozilla.org", "dns")
    http_flows = json_lines(read(HTTP_PCAP, "--json", "--flows"))
    assert any("http.host=foo.bar" in f["names"] for f in http_flows)


# captures whose flows end by FIN, RST and end of stream, named by SNI, Host and DNS, over
# Ethernet, VXLAN and SLL2
AGREEMENT_PCAPS = [
    DNS_TLS_PCAP,
    TLS_PCAP,
    HTTP_PCAP,
    DNS_TUNNEL_PCAP,
    PCAPS / "tls" / "tls13-draft19" / "tls13_draft19.pcap",
    PCAPS / "vxlan-decoder-03" / "vxlan.pcap",
    PCAPS / "decode-sll2-02" / "input.pcap",
]
FLOW_IDENTITY = (
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "first",
    "last",
    "pkts_out",
    "bytes_out",
    "pkts_in",
    "bytes_in",
    "state",
    "reason",
    "outbound",
    "name",
    "name_src",
    "app",
)


def pipeline_flow_log(pcap: Path, log_path: Path) -> list[dict]:
    """The flow log `pktscope run --flow-log` writes for ``pcap`` with one decoder, in-process.

    The capture's batches of packet tuples, the decoder's fast path with its app inspector, and
    the flow-tracker service's FlowTable (default config: updates on, default local networks),
    watermark (latest batch end) and FlowLog.
    """
    cfg = PipelineConfig()
    source = OfflineSource(str(pcap))
    packets = [(num, ts, source.linktype, len(data), data) for num, (ts, data) in enumerate(source, 1)]
    inspector = load_app_inspector()
    table = FlowTable(cfg.flow, LocalMatcher(local_nets(cfg).networks))
    log = FlowLog(log_path)
    mark = -math.inf
    for i in range(0, len(packets), cfg.batch_size):
        records = decode_batch(packets[i : i + cfg.batch_size], inspector).records
        table.add(records)
        if records:
            mark = max(mark, records[-1][1])
        table.advance(mark)
        log.write(table.take_rows())
    table.finish("eos", mark)
    log.write(table.take_rows())
    log.close()
    return read_flow_log(log_path)


def test_read_flows_equal_the_pipeline_flow_log(tmp_path):
    seen: dict[str, set] = {"reason": set(), "name_src": set(), "proto": set()}
    for pcap in AGREEMENT_PCAPS:
        proc = read(pcap, "--json", "--flows")
        assert proc.returncode == 0, proc.stderr
        ours = json_lines(proc)
        theirs = pipeline_flow_log(pcap, tmp_path / f"{pcap.parent.name}.jsonl")
        assert ours and all(e["ev"] == "end" for e in theirs)
        assert sorted(tuple(map(repr, (f[k] for k in FLOW_IDENTITY))) for f in ours) == sorted(
            tuple(map(repr, (e[k] for k in FLOW_IDENTITY))) for e in theirs
        ), pcap
        for key, values in seen.items():
            values.update(f[key] for f in ours)
    # the captures exercised what they were picked for
    assert {"fin", "rst", "eos"} <= seen["reason"]
    assert {"tls.sni", "http.host", "dns"} <= seen["name_src"]
    assert {6, 17} <= seen["proto"]


def write_short_ttl_pcap(path: Path) -> None:
    """A TCP flow to 10.0.0.9, a DNS answer for that address (TTL 1 s) just after its first
    packet, the flow idling out after the answer expired (TTLs are floored at 300 s), and a
    later packet so that the file outlasts the flow."""
    import socket

    answer = dpkt.dns.DNS(
        id=7,
        qr=dpkt.dns.DNS_R,
        qd=[dpkt.dns.DNS.Q(name="svc.test", type=dpkt.dns.DNS_A)],
        an=[dpkt.dns.DNS.RR(name="svc.test", type=dpkt.dns.DNS_A, ttl=1, rdata=socket.inet_aton("10.0.0.9"))],
    )
    frames = [
        (0.0, _eth_ip_tcp("10.0.0.1", "10.0.0.9", 40000, 8080, dpkt.tcp.TH_ACK, 1, 1, b"x")),
        (0.1, _eth_ip_udp("10.0.0.53", "10.0.0.1", 53, 5353, bytes(answer))),
        (0.2, _eth_ip_tcp("10.0.0.1", "10.0.0.9", 40000, 8080, dpkt.tcp.TH_ACK, 2, 1, b"y")),
        (400.0, _eth_ip_udp("10.0.0.1", "10.0.0.2", 5000, 6000, b"later")),
    ]
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for ts, frame in frames:
            writer.writepkt(frame, ts=1700000000 + ts)


def test_dns_name_learned_mid_flow_survives_the_answer_expiring(short_tmp):
    # the pipeline names a flow as of its first event after the answer (here the update 60 s
    # in) and keeps the name; `read --flows` runs the same timers, so it shows the same name
    pcap = short_tmp / "ttl.pcap"
    write_short_ttl_pcap(pcap)
    flows = json_lines(read(pcap, "--json", "--flows"))
    tcp = next(f for f in flows if f["proto"] == 6)
    assert (tcp["dst"], tcp["state"], tcp["reason"], tcp["pkts_out"]) == (
        "10.0.0.9",
        "established",
        "idle",
        2,
    )
    assert tcp["names"] == ["dns=svc.test"]
    (logged,) = (e for e in pipeline_flow_log(pcap, short_tmp / "ttl.jsonl") if e["proto"] == 6)
    assert (logged["name"], logged["name_src"], logged["reason"]) == ("svc.test", "dns", "idle")


def _eth(etype: int, payload: bytes) -> bytes:
    return b"\x04" * 6 + b"\x02" * 6 + struct.pack("!H", etype) + payload


def _ip6(nxt: int, payload: bytes) -> bytes:
    src, dst = socket.inet_pton(socket.AF_INET6, "fe80::1"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    return _eth(0x86DD, struct.pack("!IHBB16s16s", 0x60000000, len(payload), nxt, 64, src, dst) + payload)


def _ip4(proto: int, fragw: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 9, fragw, 64, proto, 0, b"\n\0\0\1", b"\n\0\0\2"
    )
    return _eth(0x0800, header + payload)


HOPOPTS_PAD = b"\x01\x04\0\0\0\0"  # PadN filling an 8-byte extension header
UDP_HDR = struct.pack("!HHHH", 1000, 2000, 8 + 40, 0)


def layered_frames() -> list[bytes]:
    """Packets whose upper protocol sits behind IPv6 extension headers or in fragments."""
    return [
        _ip6(0, bytes([58, 0]) + HOPOPTS_PAD + bytes([128, 0, 0, 0, 0, 1, 0, 1])),  # hop-by-hop, ICMPv6
        _ip6(0, bytes([47, 0]) + HOPOPTS_PAD + b"\0\0\x08\0" + b"gre!"),  # hop-by-hop, GRE
        _ip6(60, bytes([59, 0]) + HOPOPTS_PAD),  # destination options, no next header
        _ip6(44, struct.pack("!BxHI", 17, 1, 5) + UDP_HDR + b"a" * 16),  # first fragment, UDP
        _ip6(44, struct.pack("!BxHI", 17, 3 << 3, 5) + b"b" * 24),  # later fragment
        _ip6(0, bytes([44, 0]) + HOPOPTS_PAD + struct.pack("!BxHI", 6, 2 << 3, 6) + b"c" * 8),
        _ip4(17, 0x2000, UDP_HDR + b"d" * 16),  # IPv4 first fragment
        _ip4(17, 3, b"e" * 24),  # IPv4 later fragment
        _ip4(6, 0, struct.pack("!HHIIBBHHH", 5, 6, 7, 0, 0x20, 0x02, 1, 0, 0)[:12]),  # cut TCP header
    ]


def flow_table_view(rec: tuple) -> tuple:
    """A record as the FlowTable reads it: fragments without ports and flags; paylen (which it
    does not read) only for unfragmented TCP and UDP, where packet_record knows it."""
    if rec[R_FRAG] != FRAG_NONE:
        return (*rec[:6], 0, 0, 0, 0, *rec[R_PAYLEN + 1 :])
    if rec[3] not in (6, 17):
        return (*rec[:R_PAYLEN], 0, *rec[R_PAYLEN + 1 :])
    return rec


def test_packet_record_is_the_fast_path_record():
    # everything the FlowTable reads, for every corpus packet and for extension headers and
    # fragments (the corpus has none); paylen is TCP's and UDP's only, fragments have no ports
    layered = [(i, 1.0 + i, 1, len(f), f) for i, f in enumerate(layered_frames(), 1)]
    assert [r[3] for r in decode_batch(layered).records] == [58, 47, 59, 17, 17, 6, 17, 17]
    packets = [layered]
    for path in sorted(p for p in PCAPS.rglob("*") if p.is_file()):
        source = OfflineSource(str(path))
        packets.append([(i, ts, source.linktype, len(d), d) for i, (ts, d) in enumerate(source, 1)])
    compared = fragments = 0
    for pkts in packets:
        fast = {r[0]: r for r in decode_batch(pkts).records}
        for pkt in pkts:
            fields, l4 = dissect(*pkt)
            ours, theirs = packet_record(fields, l4, None), fast.get(pkt[0])
            assert (ours is None) == (theirs is None), fields
            if theirs is None:
                continue
            if theirs[R_FRAG] != FRAG_NONE:
                fragments += 1
            assert flow_table_view(ours) == flow_table_view(theirs), fields
            compared += 1
    assert compared > 3000 and fragments == 5


def test_read_flows_keeps_a_bounded_number_of_flows():
    flows = ReadFlows(max_shown=2, batch=1)
    for port in (1, 2, 3, 4):
        frame = _eth_ip_tcp("10.0.0.1", "10.0.0.2", port, 80, dpkt.tcp.TH_SYN, 1, 0, b"")
        flows.add(*dissect(port, 100.0 + port, 1, len(frame), frame), None)
    fields, l4 = dissect(5, 105.0, 1, 9, b"\xff" * 9)  # not IP: no record, no flow
    flows.add(fields, l4, None)
    assert flows.non_ip == 1
    shown = flows.finish()
    assert [f["sport"] for f in shown] == [1, 2] and flows.not_shown == 2
    assert all(f["state"] == "syn_sent" and f["reason"] == "eos" for f in shown)


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
    # on the frame completing the Certificate record, where Wireshark shows it too
    assert server.split()[0] == "11" and "Certificate" in server and "CN=www.github.com" in server
    flow, _stragglers = json_lines(read(TLS_PCAP, "--json", "--flows"))
    assert "tls.sni=raw.githubusercontent.com" in flow["names"]
    quic_pcap = PCAPS / "ja4-quic" / "input.pcap"
    quic = json_lines(read(quic_pcap, "--json", "-Y", 'quic.sni matches "BLOGGER" and udp.dstport == 443'))
    assert quic and all(p["quic"]["sni"] == "www.blogger.com" for p in quic)
    assert "Initial, Client Hello SNI=www.blogger.com" in read(quic_pcap, "-c", "1").stdout


def test_flows_local_net_decides_outbound_as_run_does():
    (default,) = json_lines(read(DNS_PCAP, "--json", "--flows"))
    (custom,) = json_lines(read(DNS_PCAP, "--json", "--flows", "--local-net", "203.0.113.0/24"))
    assert default["outbound"] is True  # a private client asking its resolver
    assert custom["outbound"] is False  # its network is not a local one now
    bad = read(DNS_PCAP, "--flows", "--local-net", "10.0.0.300/8")
    assert bad.returncode == 2 and "write it like 10.1.0.0/16" in bad.stderr


@pytest.mark.parametrize(
    "expr",
    ["tcp.stream == 3", "udp.stream <= 2", "tcp.analysis.initial_rtt", "tcp.flags.syn == 1", "anomaly", "dns"],
)
def test_summary_lines_match_the_frames_json_mode_matches(expr):
    """`read -Y` without --json skips the stream/RTT/findings state unless the filter reads it:
    the frames it prints are those --json (which always keeps that state) prints."""
    import io

    from services.cli.read import read_capture

    pcap = PCAPS / "vxlan-decoder-03" / "vxlan.pcap"  # TCP streams with handshakes, DNS over UDP
    text, js = io.StringIO(), io.StringIO()
    read_capture(str(pcap), text, expr=expr)
    read_capture(str(pcap), js, expr=expr, as_json=True)
    summary_frames = [int(line.split()[0]) for line in text.getvalue().splitlines()]
    json_frames = [json.loads(line)["frame"]["number"] for line in js.getvalue().splitlines()]
    assert summary_frames == json_frames
    if expr != "anomaly":
        assert summary_frames, f"{expr} matches nothing in {pcap}: pick a capture where it does"
