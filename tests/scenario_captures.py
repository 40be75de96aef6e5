"""Captures built for scenario tests: several local hosts, a learning window, then something new.

``volume_spike_capture`` is the determinism scenario of docs/architecture.md ("Time and end of
stream"): a steady sender during learning, then one large flow while every other shard is idle
for many minutes of packet time, then quiet traffic again. Any release of events ahead of the
slowest shard's time shows up as a spike that is scored in the wrong interval, or not at all.
"""

from __future__ import annotations

from pathlib import Path

import dpkt

from tests.pipeline_helpers import _eth_ip_tcp as _tcp
from tests.pipeline_helpers import write_pcap

T0 = 1_700_000_000.0
SPIKER, QUIET_B, QUIET_C = "10.1.0.1", "10.1.0.2", "10.1.0.3"
REMOTE_US, REMOTE_DE, REMOTE_GB = "93.184.216.34", "81.169.145.10", "151.101.0.81"
MSS = 8960  # jumbo frames keep a 40 MB flow at ~4,500 packets


def upload(src: str, dst: str, sport: int, dport: int, t0: float, nbytes: int, duration: float) -> list:
    """A TCP connection that sends ``nbytes`` from ``src`` over ``duration`` seconds, then closes."""
    S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    c, s = 1000, 5000
    pkts = [
        (t0, _tcp(src, dst, sport, dport, S, c, 0)),
        (t0 + 0.01, _tcp(dst, src, dport, sport, S | A, s, c + 1)),
        (t0 + 0.02, _tcp(src, dst, sport, dport, A, c + 1, s + 1)),
    ]
    c += 1
    s += 1
    segments = max(1, -(-nbytes // MSS))
    step = duration / segments
    payload = b"x" * MSS
    t = t0 + 0.03
    for i in range(segments):
        size = min(MSS, nbytes - i * MSS)
        pkts.append((t, _tcp(src, dst, sport, dport, A | P, c, s, payload[:size])))
        c += size
        if i % 8 == 7:
            pkts.append((t + step / 2, _tcp(dst, src, dport, sport, A, s, c)))
        t += step
    pkts += [
        (t, _tcp(src, dst, sport, dport, F | A, c, s)),
        (t + 0.01, _tcp(dst, src, dport, sport, F | A, s, c + 1)),
        (t + 0.02, _tcp(src, dst, sport, dport, A, c + 1, s + 1)),
    ]
    return pkts


SHARD_COUNTS = (2, 3, 4)


class PortPicker:
    """Source ports whose flows land on decoder 0 (or never on it) for every decoder count,
    as capture's own sharder decides."""

    def __init__(self) -> None:
        from services.capture.sharding import make_sharder

        self.sharders = [make_sharder(1, n) for n in SHARD_COUNTS]
        self.port = 40000

    def next(self, src: str, dst: str, dport: int, on_first: bool) -> int:
        while True:
            self.port += 1
            probe = _tcp(src, dst, self.port, dport, 2, 0, 0)
            shards = [shard(probe) for shard in self.sharders]
            if all(s == 0 for s in shards) if on_first else all(s != 0 for s in shards):
                return self.port


def volume_spike_capture(path: Path, learning: float = 1800.0) -> Path:
    """Three hosts; SPIKER sends ~200 KB a minute while learning, then 40 MB in one flow.

    Every SPIKER flow lands on decoder 0 and every other flow elsewhere, with 2, 3 or 4
    decoders. The 40 MB flow starts 100 s after learning ends and lasts 18 s; for the next 12
    minutes of packet time only SPIKER sends (a small upload a minute), so every other shard is
    idle; then all three hosts talk again, so the spike's interval is closed mid-stream.
    """
    packets: list = []
    ports = PortPicker()
    minute = 0.0
    while minute < learning:
        packets += upload(
            SPIKER, REMOTE_US, ports.next(SPIKER, REMOTE_US, 443, True), 443, T0 + minute + 1, 200_000, 5.0
        )
        packets += upload(
            QUIET_B, REMOTE_DE, ports.next(QUIET_B, REMOTE_DE, 443, False), 443, T0 + minute + 21, 20_000, 1.0
        )
        packets += upload(
            QUIET_C, REMOTE_GB, ports.next(QUIET_C, REMOTE_GB, 443, False), 443, T0 + minute + 41, 20_000, 1.0
        )
        minute += 60.0
    spike_at = T0 + learning + 100.0
    packets += upload(
        SPIKER, REMOTE_US, ports.next(SPIKER, REMOTE_US, 443, True), 443, spike_at, 40_000_000, 18.0
    )
    for k in range(12):
        t = spike_at + 60.0 * (k + 1)
        packets += upload(SPIKER, REMOTE_US, ports.next(SPIKER, REMOTE_US, 443, True), 443, t, 2_000, 0.5)
    later = spike_at + 18.0 + 12 * 60.0 + 30.0
    for k, (host, remote) in enumerate(((QUIET_B, REMOTE_DE), (QUIET_C, REMOTE_GB), (SPIKER, REMOTE_US))):
        port = ports.next(host, remote, 443, host == SPIKER)
        packets += upload(host, remote, port, 443, later + 60.0 * k, 20_000, 1.0)
    packets.sort(key=lambda p: p[0])
    return write_pcap(path, packets)


def geo_dbs(directory: Path) -> tuple[Path, Path]:
    """Country and ASN databases covering the scenario's remote addresses."""
    from tests.mmdb_factory import build_asn_db, build_country_db

    country = build_country_db(
        directory / "country.mmdb",
        {"93.184.216.0/24": "US", "81.169.145.0/24": "DE", "151.101.0.0/24": "GB"},
    )
    asn = build_asn_db(
        directory / "asn.mmdb",
        {
            "93.184.216.0/24": (15133, "EDGECAST"),
            "81.169.145.0/24": (6724, "STRATO"),
            "151.101.0.0/24": (54113, "FASTLY"),
        },
    )
    return country, asn
