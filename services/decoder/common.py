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
    """Dotted IPv4 or compressed IPv6 text of raw address bytes.

    Remembered (up to 65,536 addresses, then forgotten at once): a hit is a third of
    inet_ntop's 200 ns, and `pktscope read` formats two addresses a packet.
    """
    text = _TEXT.get(b)
    if text is None:
        if len(b) == 4:
            text = socket.inet_ntop(socket.AF_INET, b)
        elif len(b) == 16:
            text = socket.inet_ntop(socket.AF_INET6, b)
        else:
            return b.hex(":")
        if len(_TEXT) >= 65_536:
            _TEXT.clear()
        _TEXT[bytes(b)] = text
    return text


_TEXT: dict[bytes, str] = {}


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('mac_text', 'ip_text'))
