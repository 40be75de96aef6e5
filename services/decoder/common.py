"""What every decoding layer shares: the malformed-packet signal and address formatting."""

from __future__ import annotations

import socket
import struct

U16 = struct.Struct("!H")

# Anything a layer can raise while reading attacker-controlled bytes. ``struct.error`` is how
# ``unpack_from`` reports a header that runs past the captured bytes; IndexError comes from
# single-byte reads. Callers catch exactly this tuple, count the packet malformed and move on.


class Malformed(ValueError):
    """A packet that cannot be decoded; the message is the reason shown by ``pktscope read``."""


DECODE_ERRORS = (Malformed, struct.error, IndexError, ValueError)


def mac_text(b: bytes) -> str:
    """aa:bb:cc:dd:ee:ff"""
    return b.hex(":")


def ip_text(b: bytes) -> str:
    """Dotted IPv4 or compressed IPv6 text of raw address bytes."""
    if len(b) == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    if len(b) == 16:
        return socket.inet_ntop(socket.AF_INET6, b)
    return b.hex(":")
