"""`pktscope diff A B`: packets only in A, only in B, and common, compared by content as a multiset.

Two packets are the same when their bytes are (timestamps never count). A packet that occurs
n times in A and m times in B is common min(n, m) times; the first occurrences are the common
ones, the rest are "only". Fields that change in transit can be left out of the comparison:
``--ignore-ttl`` (IPv4 TTL, IPv6 hop limit), ``--ignore-checksums`` (IPv4 header, TCP, UDP,
ICMP/ICMPv6 checksums), ``--ignore-link`` (compare from the IP header on: MAC addresses change
at every router), ``--ignore-transit`` (all three). Each packet is kept as a 16-byte digest of
its compared bytes and its frame number, so memory grows by ~100 bytes per packet, not by its size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections import defaultdict
from typing import Any

from services.capture.sources import CaptureError, OfflineSource
from services.decoder import link

IPV4, IPV6 = link.ETH_IP4, link.ETH_IP6
# L4 checksum offsets in their headers
CHECKSUM_AT = {6: 16, 17: 6, 1: 2, 58: 2}


def normalized(
    linktype: int, data: bytes, *, ttl: bool = False, checksums: bool = False, link_layer: bool = False
) -> bytes:
    """The bytes compared: ``data`` with the ignored fields zeroed (and the link header dropped)."""
    if not (ttl or checksums or link_layer):
        return data
    try:
        etype, off = link.locate(linktype, data, {}, [])
    except Exception:  # not decodable: compared whole
        return data
    if etype not in (IPV4, IPV6) or off >= len(data):
        return data
    buf = bytearray(data)
    if etype == IPV4 and off + 20 <= len(buf):
        ihl = (buf[off] & 0x0F) * 4
        if ttl:
            buf[off + 8] = 0
        if checksums:
            buf[off + 10 : off + 12] = b"\0\0"
            frag = struct.unpack_from("!H", buf, off + 6)[0] & 0x1FFF
            if not frag:
                _zero_l4(buf, off + ihl, buf[off + 9])
    elif etype == IPV6 and off + 40 <= len(buf):
        if ttl:
            buf[off + 7] = 0
        if checksums:
            _zero_l4(buf, off + 40, buf[off + 6])
    return bytes(buf[off:] if link_layer else buf)


def _zero_l4(buf: bytearray, l4: int, proto: int) -> None:
    at = CHECKSUM_AT.get(proto)
    if at is not None and l4 + at + 2 <= len(buf):
        buf[l4 + at : l4 + at + 2] = b"\0\0"


def _digests(path: str, **ignore: bool) -> tuple[list[tuple[bytes, int]], str | None]:
    source = OfflineSource(path)
    out = []
    for num, (_ts, data) in enumerate(source, 1):
        key = normalized(source.linktype, data, **ignore)
        out.append((hashlib.blake2b(key, digest_size=16).digest(), num))
    return out, source.error


def diff_captures(a: str, b: str, **ignore: bool) -> dict[str, Any]:
    """{"only_a", "only_b", "common"} counts and the frame numbers of the "only" packets."""
    pa, err_a = _digests(a, **ignore)
    pb, err_b = _digests(b, **ignore)
    in_b: dict[bytes, list[int]] = defaultdict(list)
    for key, num in pb:
        in_b[key].append(num)
    used: dict[bytes, int] = defaultdict(int)
    only_a = []
    common = 0
    for key, num in pa:
        if used[key] < len(in_b.get(key, ())):
            used[key] += 1
            common += 1
        else:
            only_a.append(num)
    only_b = [num for key, nums in in_b.items() for num in nums[used[key] :]]
    only_b.sort()
    return {
        "a": a,
        "b": b,
        "packets_a": len(pa),
        "packets_b": len(pb),
        "common": common,
        "only_a": len(only_a),
        "only_b": len(only_b),
        "only_a_frames": only_a,
        "only_b_frames": only_b,
        "ignored": sorted(k for k, v in ignore.items() if v),
        "errors": [e for e in (err_a and f"{a}: {err_a}", err_b and f"{b}: {err_b}") if e],
    }


def run(args: argparse.Namespace) -> int:
    transit = args.ignore_transit
    try:
        result = diff_captures(
            args.a,
            args.b,
            ttl=transit or args.ignore_ttl,
            checksums=transit or args.ignore_checksums,
            link_layer=transit or args.ignore_link,
        )
    except CaptureError as err:
        print(f"pktscope diff: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        ignored = f" (ignoring {', '.join(result['ignored'])})" if result["ignored"] else ""
        print(f"common:      {result['common']}{ignored}")
        print(f"only in A:   {result['only_a']}  ({result['packets_a']} packets in {args.a})")
        print(f"only in B:   {result['only_b']}  ({result['packets_b']} packets in {args.b})")
        if args.frames:
            print("frames only in A: " + " ".join(map(str, result["only_a_frames"])))
            print("frames only in B: " + " ".join(map(str, result["only_b_frames"])))
    for error in result["errors"]:
        print(f"pktscope diff: capture file ends early: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "diff",
        help="packets only in A, only in B, and common (by content, as a multiset)",
        description="Compare two captures packet by packet content; timestamps never count.",
    )
    p.add_argument("a", help="first capture (pcap/pcapng)")
    p.add_argument("b", help="second capture (pcap/pcapng)")
    p.add_argument("--ignore-ttl", action="store_true", help="leave IPv4 TTL / IPv6 hop limit out")
    p.add_argument("--ignore-checksums", action="store_true", help="leave IP, TCP, UDP, ICMP checksums out")
    p.add_argument(
        "--ignore-link", action="store_true", help="compare from the IP header on (MACs change per hop)"
    )
    p.add_argument("--ignore-transit", action="store_true", help="all of the three above")
    p.add_argument(
        "--frames", action="store_true", help="also list the frame numbers found only in A / only in B"
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)
