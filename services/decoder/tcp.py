"""TCP header layout and display fields.

Rules shared with the fast path (which inlines them): a data offset below 20 bytes or beyond
the IP payload is malformed, except in a first fragment, which may legitimately be too short to
hold the whole header (ports are then unknown: 0).
"""

from __future__ import annotations

import struct
from typing import Any

from services.decoder.common import Malformed
from shared.records import FRAG_FIRST

# sport, dport, seq, ack, data offset/reserved, flags, window, checksum, urgent pointer
TCP = struct.Struct("!HHIIBBHHH")
# the fast path's selection: sport, dport, seq, data offset, flags
TCP_FAST = struct.Struct("!HHI4xBB6x")  # padded to 20 bytes: a cut header is malformed

FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")
TH_SYN_FIN_RST = 0x07


def _flag_fields(offx2: int, flags: int) -> dict[str, int]:
    """``tcp.flags.*`` of one flag word, kept as a template (at most 4096 words): copying one
    is a quarter of the time building it took (`pktscope read` decodes 71k TCP packets of
    sv-merged.pcap)."""
    value = ((offx2 & 0x0F) << 8) | flags
    fields: dict[str, int] = {"value": value}
    for bit, name in enumerate(FLAG_NAMES):
        fields[name] = (flags >> bit) & 1
    fields["ae"] = offx2 & 1
    fields["res"] = (offx2 >> 1) & 7
    _FLAG_FIELDS[value] = fields
    return dict(fields)


_FLAG_FIELDS: dict[int, dict[str, int]] = {}


def parse(
    data: bytes, off: int, l4len: int, frag: int, out: dict[str, Any] | None = None
) -> tuple[int, int, int, int, int]:
    """Return (sport, dport, flags, seq, header length); header length 0 if a first fragment is too short."""
    if frag == FRAG_FIRST and (l4len < 20 or off + 20 > len(data)):
        return 0, 0, 0, 0, 0
    sport, dport, seq, ack, offx2, flags, win, csum, urg = TCP.unpack_from(data, off)
    hlen = (offx2 >> 4) << 2
    if out is not None:
        flag_fields = _FLAG_FIELDS.get(((offx2 & 0x0F) << 8) | flags)
        flag_fields = dict(flag_fields) if flag_fields is not None else _flag_fields(offx2, flags)
        out["tcp"] = {
            "srcport": sport,
            "dstport": dport,
            "seq": seq,
            "ack": ack,
            "hdr_len": hlen,
            "len": max(0, l4len - hlen),
            "flags": flag_fields,
            "window_size": win,
            "checksum": csum,
            "urgent_pointer": urg,
        }
    if hlen < 20:
        raise Malformed(f"TCP header length {hlen} < 20")
    if hlen > l4len:
        if frag == FRAG_FIRST:
            return 0, 0, 0, 0, 0
        raise Malformed(f"TCP header length {hlen} > IP payload {l4len}")
    return sport, dport, flags, seq, hlen


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('parse',))
