"""frame.len (the record's original length) and frame.cap_len, as tshark reads them.

frame.len comes from the capture record header (services/capture/pcapfile.py), never from an
IP length: checked on every corpus capture against tshark, and on snaplen-cut captures written
here in each format the reader handles (pcap micro/nanosecond, either byte order, pcapng).
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tshark_oracle
from conftest import BENCH_PCAP, PCAPS

from services.capture.pcapfile import CaptureFileReader
from services.capture.sources import OfflineSource
from services.cli.decode_file import decoded_packets
from services.cli.filter import compile_filter

CAPTURES = [*sorted(PCAPS.rglob("*.pcap")), BENCH_PCAP]


def ours(path: Path) -> list[list[int]]:
    return [
        [f["frame"]["number"], f["frame"]["len"], f["frame"]["cap_len"]]
        for f, _l4, _app in decoded_packets(OfflineSource(str(path)), None)
    ]


def test_frame_len_and_cap_len_match_tshark_on_every_corpus_capture():
    assert tshark_oracle.available(), "tshark is missing: run scripts/setup"
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = dict(
            zip(
                CAPTURES,
                pool.map(lambda c: tshark_oracle.frame_lengths(c), CAPTURES),
                strict=True,
            )
        )
    wrong = {str(c): (len(ours(c)), len(theirs[c])) for c in CAPTURES if ours(c) != theirs[c]}
    assert not wrong, wrong


def test_frame_8313_of_the_bench_capture_has_its_record_length():
    # its IP header claims 29,506 bytes; the record says 66 (tshark agrees)
    for f, _l4, _app in decoded_packets(OfflineSource(str(BENCH_PCAP)), None):
        if f["frame"]["number"] == 8313:
            assert f["frame"]["len"] == 66 and f["frame"]["cap_len"] == 66
            assert compile_filter("frame.len == 66 and frame.cap_len == frame.len")(f)
            break


FRAMES = [bytes(range(256)) * 6, b"\x02" * 60, bytes(range(100))]  # 1536, 60 and 100 bytes on the wire
SNAPLEN = 96


def pcap_file(path: Path, order: str = "<", nano: bool = False) -> Path:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, SNAPLEN, 1)
    for i, frame in enumerate(FRAMES):
        cap = frame[:SNAPLEN]
        out += (
            struct.pack(order + "IIII", 1_700_000_000 + i, 500 * (1000 if nano else 1), len(cap), len(frame))
            + cap
        )
    path.write_bytes(out)
    return path


def pcapng_file(path: Path) -> Path:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(
        1, struct.pack("<HHI", 1, 0, SNAPLEN) + struct.pack("<HHB3x", 9, 1, 9) + b"\0" * 4
    )  # ns stamps
    for i, frame in enumerate(FRAMES):
        cap = frame[:SNAPLEN]
        ts = (1_700_000_000 + i) * 10**9 + 500_000
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(cap), len(frame)) + cap)
    path.write_bytes(out)
    return path


@pytest.mark.parametrize("kind", ["pcap-le", "pcap-be", "pcap-ns", "pcapng"])
def test_snaplen_cut_captures_keep_the_wire_length(tmp_path, kind):
    path = tmp_path / f"{kind}.cap"
    if kind == "pcapng":
        pcapng_file(path)
    else:
        pcap_file(path, ">" if kind == "pcap-be" else "<", nano=kind == "pcap-ns")
    got = ours(path)
    assert got == [[i, len(f), min(len(f), SNAPLEN)] for i, f in enumerate(FRAMES, 1)]
    assert got == tshark_oracle.frame_lengths(path)
    with open(path, "rb") as fh:
        times = [ts for ts, _d, _w, _lt in CaptureFileReader(fh)]
    assert times[1] == pytest.approx(1_700_000_001.0005, abs=1e-7)


def test_a_record_cut_short_by_the_end_of_the_file_is_an_error_after_the_whole_ones(tmp_path):
    path = pcap_file(tmp_path / "cut.pcap")
    path.write_bytes(path.read_bytes()[:-10])
    source = OfflineSource(str(path))
    assert [r[2] for r in source.records()] == [1536, 60]
    assert source.error and "truncated record" in source.error
