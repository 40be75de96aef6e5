"""Valid Wireshark filters that pktscope cannot evaluate: exit 2 with "unsupported: <what>", never run.

Each filter is first checked to be valid for tshark (the oracle), so the list stays a list of
real Wireshark filters; then `pktscope read -Y` must refuse it with status 2, name what it
does not support, print nothing on stdout and point a caret at the column.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import tshark_oracle
from conftest import PCAPS, ROOT

CAPTURE = PCAPS / "bug-2646-01" / "input.pcap"

UNSUPPORTED = {
    "udp.length - 8 > 100": "arithmetic ('-')",
    "tcp.window_size * 2 > 1000": "arithmetic ('*')",
    "ip.ttl / 2 > 10": "arithmetic ('/')",
    "tcp.srcport % 2 == 0": "arithmetic ('%')",
    "tcp.srcport == tcp.dstport + 1": "arithmetic ('+')",
    'upper(http.host) == "X"': "function 'upper()'",
    'lower(http.host) contains "x"': "function 'lower()'",
    "count(ip.addr) > 1": "function 'count()'",
    'string(tcp.port) matches "^80"': "function 'string()'",
    "max(tcp.srcport, tcp.dstport) > 1024": "function 'max()'",
    "abs(tcp.len) > 1": "function 'abs()'",
    "ip.src#2 == 1.2.3.4": "layer operator ('#')",
    "eth.src ~= 00:00:00:00:00:00": "operator '~='",
    "tcp contains 00:00": "'tcp contains'",
    "ip[0] == 45": "slices of the 'ip' layer",
    "tcp.analysis.retransmission": "field 'tcp.analysis.retransmission' is not decoded",
    "http.cookie": "field 'http.cookie' is not decoded",
    'frame.time > "2020-01-01 00:00:00"': "field 'frame.time' is not decoded",
    "dns.qry.name.len > 10": "field 'dns.qry.name.len' is not decoded",
    'tcp.flags.str contains "S"': "field 'tcp.flags.str' is not decoded",
    "tcp.options.mss_val > 1000": "field 'tcp.options.mss_val' is not decoded",
    "tls.handshake.extensions_supported_group == 0x001d": "is not decoded",
    "smb2": "'smb2' is not a protocol or field pktscope decodes",
    "sip.Method == INVITE": "'sip.Method' is not a protocol or field",
}


def test_every_filter_of_the_list_is_valid_for_tshark():
    assert tshark_oracle.available(), "tshark is missing: run scripts/setup"
    answers = tshark_oracle.matches(CAPTURE, list(UNSUPPORTED))
    assert not {f: a for f, a in answers.items() if isinstance(a, str)}


@pytest.mark.parametrize("expr", sorted(UNSUPPORTED))
def test_unsupported_filter_exits_2_and_says_what(expr):
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "read", str(CAPTURE), "-Y", expr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[:500]
    assert proc.stdout == ""
    assert "unsupported: " in proc.stderr and UNSUPPORTED[expr] in proc.stderr, proc.stderr
    assert "^" in proc.stderr
