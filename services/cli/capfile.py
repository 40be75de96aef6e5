"""Capture files record by record, exactly: read pcap/pcapng records and write pcap or pcapng.

Written by hand (not dpkt or pypcap) because writing must keep what those drop: pypcap hands out
only (float time, bytes), without the original length; dpkt's pcapng reader takes only the first
interface and both turn timestamps into floats. Here a timestamp stays an integer count of the
interface's own units (pcap µs or ns; pcapng if_tsresol, if_tsoffset), the original length and
the interface (link type, snaplen, every IDB option: if_name, if_description, ...) travel with
each record, and a pcapng-to-pcapng write copies every interface description verbatim.

A record is ``Record(iface, ticks, caplen, origlen, data)``; ``ticks / iface.units`` seconds
(plus ``iface.offset``) since the epoch.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_PB = 0x00000002  # obsolete Packet Block
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT = 0
OPT_IF_NAME = 2
OPT_IF_DESCRIPTION = 3
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
OPT_SHB_USERAPPL = 4
MAX_BLOCK = 64 << 20  # a block longer than this is a corrupt file, not a packet
DEFAULT_SNAPLEN = 262144


class CapfileError(Exception):
    """A capture that cannot be read or written; the message says what is wrong."""


@dataclass
class Interface:
    """One capture interface: link type, snaplen, timestamp units, and its IDB options."""

    linktype: int
    snaplen: int = DEFAULT_SNAPLEN
    units: int = 1_000_000  # timestamp ticks per second
    offset: int = 0  # seconds added to every timestamp (pcapng if_tsoffset)
    options: list[tuple[int, bytes]] = field(default_factory=list)  # pcapng IDB options, verbatim
    big_endian: bool = False  # options read from a big-endian section

    @property
    def name(self) -> str | None:
        for code, value in self.options:
            if code == OPT_IF_NAME:
                return value.decode("utf-8", "replace")
        return None


class Record(NamedTuple):
    iface: int
    ticks: int
    caplen: int
    origlen: int
    data: bytes


class CaptureReader:
    """Records of a pcap or pcapng file in file order; ``interfaces`` grows as IDBs are read.

    ``error`` is set (and iteration ends) when the file ends inside a record, as libpcap does.
    """

    def __init__(self, path: str) -> None:
        try:
            self._f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed at the end of iteration
        except OSError as exc:
            raise CapfileError(f"cannot open {path}: {exc.strerror}") from None
        self.path = path
        self.interfaces: list[Interface] = []
        self.error: str | None = None
        head = self._f.read(4)
        if len(head) < 4:
            self._f.close()
            raise CapfileError(f"{path}: too short for a capture file")
        self.pcapng = struct.unpack("<I", head)[0] == PCAPNG_SHB
        self._head = head

    def close(self) -> None:
        self._f.close()

    def __iter__(self) -> Iterator[Record]:
        try:
            if self.pcapng:
                yield from self._pcapng()
            else:
                yield from self._pcap()
        finally:
            self._f.close()

    # ---- pcap
    def _pcap(self) -> Iterator[Record]:
        rest = self._f.read(20)
        if len(rest) < 20:
            raise CapfileError(f"{self.path}: truncated pcap file header")
        for endian in ("<", ">"):
            magic = struct.unpack(endian + "I", self._head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise CapfileError(f"{self.path}: not a pcap or pcapng file")
        _vmaj, _vmin, _zone, _sig, snaplen, linktype = struct.unpack(endian + "HHiIII", rest)
        units = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
        # the upper 16 bits of the link type field hold FCS bits, not the link type
        self.interfaces.append(Interface(linktype & 0x0FFFFFFF, snaplen, units))
        hdr = struct.Struct(endian + "IIII")
        read = self._f.read
        while True:
            raw = read(16)
            if not raw:
                return
            if len(raw) < 16:
                self.error = "truncated packet header"
                return
            sec, frac, caplen, origlen = hdr.unpack(raw)
            if caplen > MAX_BLOCK:
                self.error = f"packet of {caplen} bytes: corrupt file"
                return
            data = read(caplen)
            if len(data) < caplen:
                self.error = "truncated packet data"
                return
            yield Record(0, sec * units + frac, caplen, origlen, data)

    # ---- pcapng
    def _pcapng(self) -> Iterator[Record]:
        read = self._f.read
        head = self._head
        endian = "<"
        section_base = 0  # index in self.interfaces of this section's interface 0
        while True:
            raw = head + read(8 - len(head)) if head else read(8)
            head = b""
            if not raw:
                return
            if len(raw) < 8:
                self.error = "truncated block header"
                return
            btype = struct.unpack(endian + "I", raw[:4])[0]
            if btype == PCAPNG_SHB or struct.unpack("<I", raw[:4])[0] == PCAPNG_SHB:
                bom = read(4)
                if len(bom) < 4:
                    self.error = "truncated section header"
                    return
                endian = "<" if struct.unpack("<I", bom)[0] == BYTE_ORDER_MAGIC else ">"
                if struct.unpack(endian + "I", bom)[0] != BYTE_ORDER_MAGIC:
                    raise CapfileError(f"{self.path}: bad pcapng byte-order magic")
                blen = struct.unpack(endian + "I", raw[4:8])[0]
                if blen < 28 or blen > MAX_BLOCK:
                    self.error = "corrupt section header block"
                    return
                body = read(blen - 12)
                if len(body) < blen - 12:
                    self.error = "truncated section header block"
                    return
                section_base = len(self.interfaces)
                continue
            blen = struct.unpack(endian + "I", raw[4:8])[0]
            if blen < 12 or blen > MAX_BLOCK or blen % 4:
                self.error = f"corrupt block of length {blen}"
                return
            body = read(blen - 8)
            if len(body) < blen - 8:
                self.error = "truncated block"
                return
            body = body[:-4]  # the trailing copy of the block length
            if btype == PCAPNG_IDB:
                self.interfaces.append(_idb(body, endian))
            elif btype in (PCAPNG_EPB, PCAPNG_PB):
                if len(body) < 20:
                    self.error = "short packet block"
                    return
                if btype == PCAPNG_EPB:
                    iface, hi, lo, caplen, origlen = struct.unpack(endian + "IIIII", body[:20])
                else:
                    iface, _drops, hi, lo, caplen, origlen = struct.unpack(endian + "HHIIII", body[:20])
                index = section_base + iface
                if index >= len(self.interfaces) or caplen > len(body) - 20:
                    self.error = "packet block for an undescribed interface or longer than its block"
                    return
                yield Record(index, (hi << 32) | lo, caplen, origlen, body[20 : 20 + caplen])
            elif btype == PCAPNG_SPB:
                if section_base >= len(self.interfaces) or len(body) < 4:
                    self.error = "simple packet block without an interface"
                    return
                origlen = struct.unpack(endian + "I", body[:4])[0]
                snap = self.interfaces[section_base].snaplen or origlen
                caplen = min(origlen, snap, len(body) - 4)
                yield Record(section_base, 0, caplen, origlen, body[4 : 4 + caplen])
            # other blocks (name resolution, statistics, custom, ...) are skipped


def _idb(body: bytes, endian: str) -> Interface:
    linktype, _reserved, snaplen = struct.unpack(endian + "HHI", body[:8])
    options = _options(body[8:], endian)
    units, offset = 1_000_000, 0
    for code, value in options:
        if code == OPT_IF_TSRESOL and value:
            v = value[0]
            units = 2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F)
        elif code == OPT_IF_TSOFFSET and len(value) >= 8:
            offset = struct.unpack(endian + "q", value[:8])[0]
    return Interface(linktype, snaplen, units, offset, options, endian == ">")


def _options(data: bytes, endian: str) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos + 4 <= len(data):
        code, length = struct.unpack(endian + "HH", data[pos : pos + 4])
        if code == OPT_ENDOFOPT:
            break
        out.append((code, data[pos + 4 : pos + 4 + length]))
        pos += 4 + ((length + 3) & ~3)
    return out


def wants_pcapng(path: str, force: bool = False) -> bool:
    """pcapng when asked for or when the name ends in .pcapng (any case), else pcap."""
    return force or path.lower().endswith(".pcapng")


class CaptureWriter:
    """Writes records as pcap (one link type) or pcapng (every interface described).

    pcap: microsecond timestamps unless some interface has finer units (then nanoseconds);
    pcapng: each interface's own units and options, so ticks are copied unchanged.
    The file is created on the first record (or at close, empty but valid).
    """

    def __init__(self, path: str, *, pcapng: bool, app: str = "pktscope") -> None:
        self.path = path
        self.pcapng = pcapng
        self.app = app
        self._f: BinaryIO | None = None
        self._ifaces: list[Interface] = []
        self._map: dict[int, int] = {}  # reader interface id -> written interface id
        self._ns = False
        self.written = 0
        try:
            self._f = open(path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise CapfileError(f"cannot write {path}: {exc.strerror}") from None
        if pcapng:
            self._f.write(_shb(app))

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, rec: Record, iface: Interface) -> None:
        """Write one record; ``iface`` is the interface it was read from (by ``rec.iface``)."""
        f = self._f
        assert f is not None
        out_id = self._map.get(rec.iface)
        if out_id is None:
            out_id = self._add_interface(rec.iface, iface)
        if self.pcapng:
            # ticks are copied in the interface's own units: its IDB options say which
            body = (
                struct.pack(
                    "<IIIII", out_id, rec.ticks >> 32, rec.ticks & 0xFFFFFFFF, rec.caplen, rec.origlen
                )
                + rec.data
                + b"\0" * (-rec.caplen % 4)
            )
            blen = 12 + len(body)
            f.write(struct.pack("<II", PCAPNG_EPB, blen) + body + struct.pack("<I", blen))
        else:
            units = 1_000_000_000 if self._ns else 1_000_000
            total = rec.ticks * units // iface.units if iface.units != units else rec.ticks
            sec, frac = divmod(total, units)
            sec += iface.offset
            f.write(struct.pack("<IIII", sec & 0xFFFFFFFF, frac, rec.caplen, rec.origlen) + rec.data)
        self.written += 1

    def _add_interface(self, reader_id: int, iface: Interface) -> int:
        f = self._f
        assert f is not None
        if self.pcapng:
            out_id = len(self._ifaces)
            self._ifaces.append(iface)
            self._map[reader_id] = out_id
            f.write(_idb_block(iface))
            return out_id
        if self._ifaces:
            first = self._ifaces[0]
            if first.linktype != iface.linktype:
                raise CapfileError(
                    f"{self.path}: packets of link types {first.linktype} and {iface.linktype} "
                    "cannot share a pcap file; write pcapng instead (name ending .pcapng or --pcapng)"
                )
            self._map[reader_id] = 0
            return 0
        self._ifaces.append(iface)
        self._map[reader_id] = 0
        self._ns = iface.units > 1_000_000
        magic = PCAP_MAGIC_NS if self._ns else PCAP_MAGIC_US
        f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, iface.snaplen or DEFAULT_SNAPLEN, iface.linktype))
        return 0

    def close(self) -> None:
        f = self._f
        if f is None:
            return
        if not self.pcapng and not self._ifaces:  # nothing matched: still a valid (empty) pcap
            f.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, DEFAULT_SNAPLEN, 1))
        f.close()
        self._f = None

    def abandon(self) -> None:
        """Close and remove a file that could not be written whole."""
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _shb(app: str) -> bytes:
    opts = _option(OPT_SHB_USERAPPL, app.encode()) + _option(OPT_ENDOFOPT, b"")
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts
    blen = 12 + len(body)
    return struct.pack("<II", PCAPNG_SHB, blen) + body + struct.pack("<I", blen)


# options whose values are text, so they need no byte swapping: comment, if_name,
# if_description, if_os, if_hardware
TEXT_OPTIONS = frozenset((1, 2, 3, 12, 15))


def _idb_block(iface: Interface) -> bytes:
    options = list(iface.options)
    if iface.big_endian:  # numbers in the other options would need swapping: keep the text ones
        options = [(c, v) for c, v in options if c in TEXT_OPTIONS or c == OPT_IF_TSRESOL]
    codes = {code for code, _ in options}
    if OPT_IF_TSRESOL not in codes and iface.units != 1_000_000:
        options.append((OPT_IF_TSRESOL, bytes([_tsresol(iface.units)])))
    if OPT_IF_TSOFFSET not in codes and iface.offset:
        options.append((OPT_IF_TSOFFSET, struct.pack("<q", iface.offset)))
    opts = b"".join(_option(code, value) for code, value in options)
    if opts:
        opts += _option(OPT_ENDOFOPT, b"")
    body = struct.pack("<HHI", iface.linktype, 0, iface.snaplen) + opts
    blen = 12 + len(body)
    return struct.pack("<II", PCAPNG_IDB, blen) + body + struct.pack("<I", blen)


def _tsresol(units: int) -> int:
    exp = 0
    n = units
    while n > 1 and n % 10 == 0:
        n //= 10
        exp += 1
    if n == 1:
        return exp
    return 0x80 | (units.bit_length() - 1)
