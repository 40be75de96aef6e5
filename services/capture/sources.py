"""Packet sources: a capture file or a live interface, both through pypcap (libpcap).

libpcap reads pcap and pcapng alike. pypcap hands out (timestamp, bytes) only, not the
original wire length, so live packets carry ``wirelen = len(data)`` and the decoder raises it
from the IP total length when a snaplen cut the packet short. Files are read by
``pcapfile.CaptureFileReader`` instead, which keeps each record's original length
(``OfflineSource.records``); libpcap remains the reader of anything else it can open.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator

import pcap

from services.capture.pcapfile import CaptureFileReader, NotACaptureFile

# Live capture: the kernel hands packets over in blocks (not one wake-up per packet; a block is
# handed over after at most timeout_ms even when not full, so alerts stay prompt), into a
# buffer big enough to ride out the moments the capture process is not scheduled.
LIVE_BUFFER_BYTES = 32 << 20

# AF_PACKET fanout (linux/if_packet.h): the kernel spreads one interface's packets over the
# sockets of a group. The hash mode uses skb_get_hash_symmetric, so both directions of a flow
# reach one socket; DEFRAG reassembles IP fragments first, so a datagram's fragments do too.
SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000


def fanout_group_id(run_id: str) -> int:
    """The fanout group of one run's captures: the same for all of them, unlikely to meet another run's."""
    try:
        return int(run_id[-4:], 16) & 0xFFFF if run_id else os.getppid() & 0xFFFF
    except ValueError:
        return hash(run_id) & 0xFFFF


def join_fanout(fd: int, group: int) -> None:
    """Put the packet socket ``fd`` (libpcap's) in fanout group ``group`` (hash mode, defrag)."""
    value = (group & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)
    sock = socket.socket(fileno=os.dup(fd))  # a dup: closing it leaves libpcap's socket open
    try:
        # as bytes: with the DEFRAG flag the value passes a C int's range (setsockopt's int form)
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", value))
    except OSError as exc:
        hint = (
            "another program uses this fanout group id on the interface; start the run again (new id)"
            if exc.errno in (errno.EINVAL, errno.EEXIST, errno.EBUSY)
            else "AF_PACKET fanout needs Linux; run with --captures 1"
        )
        raise CaptureError(f"cannot join capture fanout group {group}: {exc.strerror} ({hint})") from None
    finally:
        sock.close()


class CaptureError(Exception):
    """A source that cannot be opened or read; the message says what to do about it."""


class OfflineSource:
    """A pcap/pcapng file, read start to end. ``error`` is set when the file ended early."""

    live = False

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise CaptureError(f"capture file not found: {path}")
        if os.path.isdir(path):
            raise CaptureError(f"{path} is a directory; give one pcap or pcapng file in it")
        if not os.access(path, os.R_OK):
            raise CaptureError(f"capture file not readable: {path} (check its permissions)")
        check_capture_header(path)  # a clear error for files that are no capture at all
        self.error: str | None = None
        self._file: CaptureFileReader | None = None
        self.path: str | None = None
        try:
            fh = open(path, "rb")  # noqa: SIM115 -- read to the end by records(), closed there
            self._file = CaptureFileReader(fh)
            self.linktype: int = self._file.linktype
            # a classic pcap file can also be dealt from memory (services/capture/replay.py)
            if self._file.kind == "pcap":
                self.path = path
            return
        except NotACaptureFile:
            fh.close()
        except OSError as exc:
            raise CaptureError(f"cannot read {path}: {exc}") from None
        try:
            self._pc = pcap.pcap(path, timestamp_in_ns=False)
        except OSError as exc:
            raise CaptureError(f"cannot read {path} as pcap or pcapng: {exc}") from None
        self.linktype = self._pc.datalink()

    def records(self) -> Iterator[tuple[float, bytes, int]]:
        """(ts, captured bytes, original wire length) of every record."""
        if self._file is not None:
            reader = self._file
            try:
                for ts, data, wirelen, _lt in reader:
                    yield ts, data, wirelen
            finally:
                self.error = reader.error
                reader.close()
            return
        for ts, data in self._pc:
            yield ts, data, len(data)
        # pypcap ends the iteration quietly on a truncated file; libpcap kept the reason.
        err = self._pc.geterr()
        if err:
            self.error = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        for ts, data, _wirelen in self.records():
            yield ts, data

    def stats(self) -> tuple[int, int, int]:
        return (0, 0, 0)

    def close(self) -> None:
        """Close the file (a replay dealt from memory never iterates ``records``)."""
        if self._file is not None:
            self._file.close()


PCAP_MAGICS = {
    b"\xa1\xb2\xc3\xd4": ">",  # microseconds, big-endian
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",  # nanoseconds
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\xcd\x34": ">",  # Kuznetzov's modified pcap
    b"\x34\xcd\xb2\xa1": "<",
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def check_capture_header(path: str) -> bool:
    """Raise CaptureError unless the file starts like a pcap or pcapng file; True for classic pcap.

    libpcap's own error for other files is misleading (pypcap then tries the name as an
    interface: "No such device exists"), so the header is looked at first.
    """
    if not os.path.isfile(path):
        return False  # a FIFO or device: let libpcap read it as it comes
    with open(path, "rb") as f:
        head = f.read(24)
    if not head:
        raise CaptureError(f"{path} is empty: not a pcap or pcapng file")
    magic = head[:4]
    if magic in PCAP_MAGICS:
        if len(head) < 24:
            raise CaptureError(f"{path}: not a pcap or pcapng file (its pcap header is cut short)")
        major, minor = struct.unpack(PCAP_MAGICS[magic] + "HH", head[4:8])
        if major != 2:
            raise CaptureError(
                f"{path}: not a pcap or pcapng file that can be read: pcap version {major}.{minor} "
                "(pcap files are version 2.x)"
            )
        return True
    if magic == PCAPNG_MAGIC:
        if len(head) < 12:
            raise CaptureError(f"{path}: not a pcap or pcapng file (its pcapng header is cut short)")
        return False
    shown = " ".join(f"{b:02x}" for b in head[:4])
    raise CaptureError(
        f"{path}: not a pcap or pcapng file (it starts with bytes {shown}; "
        "convert other formats with `editcap -F pcap` or `tshark -F pcapng`)"
    )


class LiveSource:
    """A live interface in non-blocking mode, polled so that the caller can flush on a timer."""

    live = True

    def __init__(
        self,
        interface: str,
        bpf: str = "",
        snaplen: int = 65535,
        promisc: bool = True,
        fanout_group: int | None = None,
    ) -> None:
        try:
            self._pc = pcap.pcap(
                interface,
                snaplen=snaplen,
                promisc=promisc,
                timeout_ms=50,
                immediate=False,
                buffer_size=LIVE_BUFFER_BYTES,
                timestamp_in_ns=False,
            )
        except OSError as exc:
            raise CaptureError(
                f"cannot capture on interface {interface!r}: {exc} "
                "(is the name right? see `ip link`; live capture needs root or CAP_NET_RAW)"
            ) from None
        if bpf:
            try:
                self._pc.setfilter(bpf)
            except OSError as exc:
                raise CaptureError(f"bad BPF filter {bpf!r}: {_text(exc)} (see `man pcap-filter`)") from None
        self._pc.setnonblock(True)
        self.linktype: int = self._pc.datalink()
        self.error: str | None = None
        self._fd = self._pc.fileno()
        if fanout_group is not None:  # one of several captures: the kernel gives us a share of the flows
            join_fanout(self._fd, fanout_group)

    def poll(self, timeout: float, on_packet: Callable[[float, bytes], None]) -> int:
        """Wait up to ``timeout`` seconds for packets and hand each to ``on_packet``."""
        select.select([self._fd], [], [], timeout)
        return self._pc.dispatch(-1, on_packet)

    def stats(self) -> tuple[int, int, int]:
        """libpcap's (received, dropped by the kernel buffer, dropped by the interface)."""
        try:
            return tuple(self._pc.stats())  # type: ignore[return-value]
        except OSError:
            return (0, 0, 0)


def check_bpf(expression: str, linktype: int = 1) -> None:
    """Compile a BPF filter without opening an interface; CaptureError says what is wrong."""
    try:
        pcap.bpf(expression.encode(), linktype)
    except (OSError, ValueError, TypeError) as exc:
        raise CaptureError(f"bad BPF filter {expression!r}: {_text(exc)} (see `man pcap-filter`)") from None


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
