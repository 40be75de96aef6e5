"""Capture's replay dealt straight from a mapped pcap file (services/capture/pcap_deal.py and its
hand-written twin scripts/cython/_pcap_deal_c.pyx) against the general path (the file reader,
sharding.deal, the packer): the same frames to the same decoders, in the same order, with the
same packet numbers, times and lengths, on every corpus capture and the bench capture; the same
errors for files cut short or with a corrupt header; both byte orders and nanosecond stamps;
the general path for what cannot be mapped.
"""

from __future__ import annotations

import importlib
import mmap
import os
import struct
from pathlib import Path

import pytest

from services.capture import pcap_deal
from services.capture.pcapfile import pcap_geometry
from services.capture.replay import ListDealer, dealer_for
from services.capture.sources import OfflineSource
from shared import compiled, packed
from tests.conftest import BENCH_PCAP, PCAPS
from tests.twin_helpers import compiled_twin

PURE = compiled.pure_module("services.capture.pcap_deal")
PCAP_MAGIC_LE = b"\xd4\xc3\xb2\xa1"
CAPTURES = [
    *sorted(p for p in PCAPS.rglob("*") if p.is_file() and p.read_bytes()[:4] == PCAP_MAGIC_LE),
    BENCH_PCAP,
]
# a corpus capture of some size, for the cases that cut, damage or skip part of one
SAMPLE = next(p for p in CAPTURES if p.stat().st_size > 20_000)
TICK = 4096  # as the capture service: a tick flushes every partial batch


def _compiled_module():
    return compiled_twin("services.capture.pcap_deal")


def _frames(dealer, decoders: int, skip: int = 0) -> tuple[list, list, str | None]:
    """Run a dealer as the replay loop does: (frames as (decoder, packets), deal results, error)."""
    out: list[tuple[int, list[tuple]]] = []
    results = []
    num = dealer.skip(skip) if skip else 0
    until = TICK

    def flush(i: int) -> None:
        taken = dealer.take(i)
        if taken is None:
            return
        body, count, last = taken
        items = packed.packets_of(body) if type(body) is bytes else list(body)
        assert len(items) == count and items[-1][0] == last
        out.append((i, items))

    while True:
        num, last_ts, full = dealer.deal(num, until)
        results.append((num, last_ts, full))
        if full >= 0:
            flush(full)
        if num >= until:
            until = num + TICK
            for i in range(decoders):
                flush(i)
        if full == -2:
            break
    for i in range(decoders):
        flush(i)
        assert dealer.pending(i) == 0
    error = dealer.error
    dealer.close()
    return out, results, error


def _general(path: Path, decoders: int, bsize: int, skip: int = 0):
    return _frames(ListDealer(OfflineSource(str(path)), decoders, bsize), decoders, skip)


def _mapped(module, path: Path, decoders: int, bsize: int, skip: int = 0):
    dealer = module.open_dealer(str(path), decoders, bsize)
    assert dealer is not None, f"{path} was not dealt from memory"
    return _frames(dealer, decoders, skip)


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_every_corpus_capture_gives_the_general_paths_frames(impl):
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        _compiled_module()
    checked = 0
    for path in CAPTURES:
        for decoders, bsize in ((1, 512), (2, 512), (3, 7)):
            if impl == "pure" and path == BENCH_PCAP and decoders != 2:
                continue  # the pure dealer is slow; one pass over the bench capture is enough
            want = _general(path, decoders, bsize)
            got = _mapped(module, path, decoders, bsize)
            assert got == want, f"{path.name}, {decoders} decoders, batches of {bsize}"
            checked += sum(len(items) for _i, items in got[0])
    assert checked > 183_000  # the bench capture at least once, and every corpus capture


def test_both_implementations_write_the_same_bodies():
    twin = _compiled_module()
    for path in [*CAPTURES[:20], BENCH_PCAP]:
        with open(path, "rb") as fh:
            big, scale, linktype = pcap_geometry(fh.read(24))
        bodies = []
        for module in (PURE, twin):
            with open(path, "rb") as fh:
                buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            dealer = module.PcapDealer(buf, big, scale, linktype, 2, 64)
            seen = []
            num = 0
            while True:
                num, _ts, full = dealer.deal(num, 1 << 62)
                if full >= 0:
                    seen.append(dealer.take(full))
                if full == -2:
                    break
            seen += [dealer.take(0), dealer.take(1)]
            dealer.close()
            bodies.append(seen)
        assert bodies[0] == bodies[1], path.name
        taken = [t for t in bodies[0] if t is not None]
        assert taken and all(type(t[0]) is bytes for t in taken)


def _rewrite(src: Path, dst: Path, big_endian: bool, nanos: bool) -> None:
    """The same records in another byte order and/or with nanosecond fractions."""
    data = src.read_bytes()
    head = struct.unpack_from("<IHHiIII", data)
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, *head[1:])]
    o = 24
    while o + 16 <= len(data):
        sec, usec, caplen, origlen = struct.unpack_from("<IIII", data, o)
        out.append(struct.pack(order + "IIII", sec, usec * 1000 if nanos else usec, caplen, origlen))
        out.append(data[o + 16 : o + 16 + caplen])
        o += 16 + caplen
    dst.write_bytes(b"".join(out))


@pytest.mark.parametrize("impl", ["pure", "compiled"])
@pytest.mark.parametrize(("big_endian", "nanos"), [(True, False), (False, True), (True, True)])
def test_byte_orders_and_nanosecond_stamps(tmp_path, impl, big_endian, nanos):
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        _compiled_module()
    src = PCAPS / "http2-keywords" / "input.pcap"
    if not src.exists():
        src = CAPTURES[0]
    path = tmp_path / "other.pcap"
    _rewrite(src, path, big_endian, nanos)
    got = _mapped(module, path, 2, 16)
    assert got == _general(path, 2, 16)
    original = _general(src, 2, 16)
    times = [pkt[1] for _i, items in got[0] for pkt in items]
    want = [pkt[1] for _i, items in original[0] for pkt in items]
    assert len(times) == len(want) > 0
    assert times == pytest.approx(want, abs=1e-9)  # the same instants, whatever the unit


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_a_file_cut_short_or_corrupt_gives_what_it_held_and_the_same_error(tmp_path, impl):
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        _compiled_module()
    data = SAMPLE.read_bytes()
    # record boundaries, to cut inside a header, inside data, and to damage a caplen
    starts = []
    o = 24
    while o + 16 <= len(data):
        starts.append(o)
        o += 16 + struct.unpack_from("<I", data, o + 8)[0]
    assert len(starts) >= 4
    mid = starts[len(starts) // 2]
    corrupt = bytearray(data)
    corrupt[mid + 8 : mid + 12] = struct.pack("<I", (1 << 24) + 1)
    cases = {
        "cut in a record header": data[: mid + 7],
        "cut in a record's data": data[: mid + 16 + 3],
        "corrupt caplen": bytes(corrupt),
    }
    for what, content in cases.items():
        path = tmp_path / "cut.pcap"
        path.write_bytes(content)
        want = _general(path, 2, 8)
        got = _mapped(module, path, 2, 8)
        assert got == want, what
        assert got[2], f"{what}: no error"
        assert sum(len(items) for _i, items in got[0]) == len(starts) // 2, what


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_a_restarted_capture_skips_what_its_predecessor_handed_out(impl):
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        _compiled_module()
    path = SAMPLE
    want = _general(path, 2, 4, skip=5)
    got = _mapped(module, path, 2, 4, skip=5)
    assert got == want
    first = min(pkt[0] for _i, items in got[0] for pkt in items)
    assert first == 6


def test_what_the_layout_cannot_hold_takes_the_general_path(tmp_path):
    data = CAPTURES[0].read_bytes()
    wide = tmp_path / "wide-linktype.pcap"
    wide.write_bytes(data[:20] + struct.pack("<I", 0x10001) + data[24:])  # past the layout's u16
    short = tmp_path / "short.pcap"
    short.write_bytes(data[:20])  # no whole file header: the general reader reports it
    for path in (wide, short):
        assert PURE.open_dealer(str(path), 2, 512) is None
        assert pcap_deal.open_dealer(str(path), 2, 512) is None
    source = OfflineSource(str(wide))
    dealer = dealer_for(source, 2, 512)
    assert isinstance(dealer, ListDealer)
    frames, _results, error = _frames(dealer, 2)
    assert error is None and sum(len(items) for _i, items in frames) == len(_general(CAPTURES[0], 1, 512)[0][0][1])


def test_a_pcapng_file_takes_the_general_path(tmp_path):
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        size = 12 + len(body)
        return struct.pack("<II", kind, size) + body + struct.pack("<I", size)

    frame = bytes(range(60))
    path = tmp_path / "one.pcapng"
    path.write_bytes(
        block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + block(1, struct.pack("<HHI", 1, 0, 0))
        + block(6, struct.pack("<IIIII", 0, 0, 5, len(frame), len(frame)) + frame)
    )
    source = OfflineSource(str(path))
    assert source.path is None
    dealer = dealer_for(source, 2, 512)
    assert isinstance(dealer, ListDealer)
    frames, _results, error = _frames(dealer, 2)
    assert error is None and [pkt[4] for _i, items in frames for pkt in items] == [frame]


def test_the_replay_uses_the_mapped_dealer_when_built():
    _compiled_module()
    source = OfflineSource(str(CAPTURES[0]))
    dealer = dealer_for(source, 2, 512)
    assert isinstance(dealer, pcap_deal.PcapDealer)
    dealer.close()
    source.close()


def _rss_file() -> int:
    """Bytes of file-backed pages this process has resident (counted in its RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_pages_already_read_leave_the_processs_memory(impl):
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        twin = _compiled_module()
        assert twin.RELEASE_EVERY == pcap_deal.RELEASE_EVERY
    size = BENCH_PCAP.stat().st_size
    assert size > 4 * pcap_deal.RELEASE_EVERY
    dealer = module.open_dealer(str(BENCH_PCAP), 2, 512)
    base = _rss_file()
    peak = base
    num = 0
    while True:
        num, _ts, full = dealer.deal(num, 1 << 62)
        if full >= 0:
            dealer.take(full)
            peak = max(peak, _rss_file())
        if full == -2:
            break
    dealer.close()
    assert num > 183_000
    # without the release the whole file (55 MB) would be resident by the end
    assert peak - base < 2 * pcap_deal.RELEASE_EVERY + (4 << 20), f"{(peak - base) >> 20} MB of the map resident"


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_a_file_cut_short_while_it_is_replayed_ends_with_an_error_not_a_crash(tmp_path, impl):
    """Reading a mapped page past a file's new end is SIGBUS: the dealer must notice the cut."""
    module = PURE if impl == "pure" else importlib.import_module("services.capture.pcap_deal")
    if impl == "compiled":
        _compiled_module()
    path = tmp_path / "shrinking.pcap"
    path.write_bytes(BENCH_PCAP.read_bytes())
    dealer = module.open_dealer(str(path), 2, 64)
    num, _ts, full = dealer.deal(0, 1 << 62)
    assert full >= 0 and dealer.error is None
    cut = 4 << 20  # far past what was read, far before the end
    os.truncate(path, cut)
    while full != -2:
        num, _ts, full = dealer.deal(num, 1 << 62)
    assert dealer.error and dealer.error.startswith("truncated record")
    dealer.close()
    whole = [pkt for _i, items in _general(path, 2, 64)[0] for pkt in items]
    assert num == len(whole) > 1000  # every record the cut file still holds, none beyond
