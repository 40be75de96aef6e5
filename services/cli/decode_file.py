"""Every packet of a capture file as display-filter fields: the loop `pktscope read` runs.

Kept apart from read.py's printing so that other callers (the display-filter conformance
test, benchmarks) decode a file exactly as `read` does, in-process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from services.capture.sources import OfflineSource
from services.decoder.dissect import L4Tuple, dissect

from .packetview import merge_app
from .wireshark_view import WiresharkView


def app_inspector() -> Any:
    """One AppInspector for the whole file (it keeps TCP reassembly and QUIC state across packets)."""
    try:
        from services.decoder.app.inspector import AppInspector
    except ModuleNotFoundError as exc:
        if exc.name != "services.decoder.app.inspector":
            raise
        print("pktscope read: no application-layer inspector in this build", file=sys.stderr)
        return None
    return AppInspector()


def decoded_packets(
    source: OfflineSource, inspector: Any = None
) -> Iterator[tuple[dict[str, Any], L4Tuple | None, dict[str, Any] | None]]:
    """(fields, l4, raw app map) per packet, in file order; ``source.error`` is set at the end."""
    linktype = source.linktype
    view = WiresharkView()
    t0: float | None = None
    for num, (ts, data, wirelen) in enumerate(source.records(), 1):
        fields, l4 = dissect(num, ts, linktype, wirelen, data)
        app = None
        if l4 is not None and inspector is not None:
            try:
                app = inspector.inspect(ts, *l4)
            except Exception as exc:  # an inspector bug must not end the read; show it on the packet
                app = None
                fields["_app_error"] = f"{type(exc).__name__}: {exc}"
            if app:
                merge_app(fields, app)
        view.add(fields, l4)
        if inspector is not None:
            inspector.expire(ts)  # idle flows go, as in the decoder's fast path
        if t0 is None:
            t0 = ts
        fields["frame"]["time_relative"] = round(ts - t0, 9)
        yield fields, l4, app


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('decoded_packets',))
