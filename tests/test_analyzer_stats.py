"""`read --stats`: the protocol hierarchy against `tshark -z io,phs`, talkers, conversations, throughput."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from conftest import PCAPS, ROOT
from tshark_tools import needs_tshark, run_tshark

from services.cli.read import read_capture
from services.cli.stats import CaptureStats

# layers pktscope decodes itself: tshark's frame counts must agree on every node made only of these
KNOWN = frozenset(
    [
        "eth",
        "sll",
        "null",
        "raw",
        "chdlc",
        "vlan",
        "pppoes",
        "ppp",
        "ip",
        "ipv6",
        "tcp",
        "udp",
        "icmp",
        "icmpv6",
        "arp",
        "vxlan",
        "dns",
    ]
)
ALL_PCAPS = sorted(PCAPS.rglob("*.pcap"))


def tshark_phs(path) -> dict[str, int]:
    """`tshark -z io,phs` as {"eth:ip:tcp": frames}."""
    result: dict[str, int] = {}
    stack: list[str] = []
    for line in run_tshark("-r", str(path), "-q", "-z", "io,phs").splitlines():
        if "frames:" not in line:
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        stack = [*stack[:depth], line.split()[0]]
        result[":".join(stack)] = int(line.split("frames:")[1].split()[0])
    return result


def our_stats(path, **kw) -> CaptureStats:
    stats = CaptureStats(**kw)
    read_capture(str(path), io.StringIO(), extras=[stats])
    return stats


def known(tree: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in tree.items() if all(layer in KNOWN for layer in k.split(":"))}


@needs_tshark
def test_protocol_hierarchy_equals_tshark_phs_on_10_captures():
    # the 10 captures with the most distinct known layer paths (ties by name): the widest spread
    ranked = sorted(
        ALL_PCAPS, key=lambda p: (-len(known({r["path"]: 1 for r in our_stats(p).hierarchy()})), str(p))
    )
    chosen = ranked[:10]
    nodes = 0
    for path in chosen:
        ours = known({r["path"]: r["frames"] for r in our_stats(path).hierarchy()})
        theirs = known(tshark_phs(path))
        assert ours == theirs, f"{path}: {ours} != tshark {theirs}"
        nodes += len(ours)
    print(f"io,phs: 10 captures, {nodes} hierarchy nodes equal")
    assert nodes >= 40


def test_talkers_conversations_throughput_add_up():
    path = PCAPS / "vxlan-decoder-03" / "vxlan.pcap"
    res = our_stats(path, interval=2.0, top=3).result()
    assert res["frames"] == 100 and res["bytes"] == 26048
    assert res["protocols"][0] == {
        "protocol": "eth",
        "path": "eth",
        "depth": 0,
        "frames": 100,
        "bytes": 26048,
    }
    assert len(res["top_talkers"]) == 3 and len(res["top_conversations"]) == 3
    sizes = [t["bytes"] for t in res["top_talkers"]]
    assert sizes == sorted(sizes, reverse=True)
    # every packet is IP: each is sent by one talker and received by one
    full = our_stats(path, top=1000).result()
    assert sum(t["bytes_sent"] for t in full["top_talkers"]) == 26048
    assert sum(t["bytes_received"] for t in full["top_talkers"]) == 26048
    assert sum(c["bytes"] for c in full["top_conversations"]) == 26048
    assert sum(c["frames_a_to_b"] + c["frames_b_to_a"] for c in full["top_conversations"]) == 100
    bins = res["throughput"]["bins"]
    assert sum(b["frames"] for b in bins) == 100 and sum(b["bytes"] for b in bins) == 26048
    assert all(b["start"] % 2.0 == 0 and b["bits_per_second"] == b["bytes"] * 4 for b in bins)


def test_stats_cli_text_and_json():
    path = PCAPS / "vxlan-decoder-03" / "vxlan.pcap"
    run = [sys.executable, "-m", "services.cli.main", "read", str(path), "--stats"]
    text = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "Protocol Hierarchy Statistics" in text.stdout and "vxlan" in text.stdout
    doc = json.loads(
        subprocess.run([*run, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    )
    assert doc["frames"] == 100 and doc["top_talkers"][0]["address"] == "172.31.0.238"
    bad = subprocess.run([*run, "--interval", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--interval" in bad.stderr
