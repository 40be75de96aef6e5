"""Compiled twins of the hot modules: which path runs, and how to get the other one.

The pure-Python modules listed in ``TWINS`` (the decoder's fast path, IPv6 walk, app inspector,
credential watching, HTTP/1, DNS, TCP reassembly and TLS fingerprints; capture's reader and
sharder; the flow table, merge, names, local-address test and TCP states; the read path's
dissectors and filter) are the reference. ``scripts/build_compiled.py`` (run by ``scripts/setup``) compiles a copy of each with
Cython into a sibling extension module (``_fastpath_c``, ...), stamped with the SHA-256 of the
source it was built from. At the end of its import, each pure module calls ``adopt()``, which
rebinds its public entry points to the twin's when there is a matching one. So the compiled path is used only when it was built from exactly
the source on disk: an edited module falls back to pure Python (with a warning) until
``scripts/setup`` runs again, instead of silently running stale code.

``PKTSCOPE_PURE=1`` forces the pure path: tests/test_compiled_identical.py runs the whole
corpus once each way, in two processes, and compares the outputs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("pktscope.compiled")

# pure module -> compiled twin (the names scripts/build_compiled.py builds)
TWINS: dict[str, str] = {
    "services.decoder.fastpath": "services.decoder._fastpath_c",
    "services.capture.sharding": "services.capture._sharding_c",
    "services.flowtracker.table": "services.flowtracker._table_c",
    "services.decoder.ipv6": "services.decoder._ipv6_c",
    "services.decoder.app.credentials": "services.decoder.app._credentials_c",
    "services.decoder.app.inspector": "services.decoder.app._inspector_c",
    "services.decoder.app.http1": "services.decoder.app._http1_c",
    "services.decoder.app.dns": "services.decoder.app._dns_c",
    "services.decoder.app.reassembly": "services.decoder.app._reassembly_c",
    "services.decoder.app.fingerprints": "services.decoder.app._fingerprints_c",
    "services.capture.pcapfile": "services.capture._pcapfile_c",
    "services.flowtracker.merge": "services.flowtracker._merge_c",
    "services.flowtracker.names": "services.flowtracker._names_c",
    "services.flowtracker.localaddr": "services.flowtracker._localaddr_c",
    "services.flowtracker.tcp_state": "services.flowtracker._tcp_state_c",
    # the detector's look at each flow event row (most are inbound flows': only their time counts)
    "services.detector.events": "services.detector._events_c",
    # the detector's read of a FLOWS frame in place (inbound rows' times without unpacking them)
    "services.detector.flows_skim": "services.detector._flows_skim_c",
    # the dissection `pktscope read` runs per packet
    "services.decoder.dissect": "services.decoder._dissect_c",
    "services.decoder.link": "services.decoder._link_c",
    "services.decoder.ipv4": "services.decoder._ipv4_c",
    "services.decoder.tcp": "services.decoder._tcp_c",
    "services.decoder.udp": "services.decoder._udp_c",
    "services.decoder.common": "services.decoder._common_c",
    "services.cli.decode_file": "services.cli._decode_file_c",
    "services.cli.wireshark_view": "services.cli._wireshark_view_c",
    "services.cli.filter.parser": "services.cli.filter._parser_c",
    "services.cli.filter.fields": "services.cli.filter._fields_c",
    "services.cli.filter.values": "services.cli.filter._values_c",
    # packed frame bodies, capture -> decoder and decoder -> flow-tracker (twin written by hand)
    "shared.packed": "shared._packed_c",
    # capture's replay of a classic pcap file into packed bodies (twin written by hand)
    "services.capture.pcap_deal": "services.capture._pcap_deal_c",
    # the decoder's batch, packed packets in, packed records out (twin written by hand)
    "services.decoder.packed_batch": "services.decoder._packed_batch_c",
    # the flow-tracker's packed records, read in place by the flow table's loop (written by hand)
    "services.flowtracker.packed_records": "services.flowtracker._packed_records_c",
    # FLOWS frames' rows packed in one call (written by hand)
    "shared.flow_rows": "shared._flow_rows_c",
}

# twins written by hand in Cython rather than compiled from the pure module (C pointers the
# pure-Python mode cannot express); their stamp covers both files and the packed layouts they
# share (PACKED_LAYOUT), so editing any of them falls back to pure Python until scripts/setup
# runs again
ROOT = Path(__file__).resolve().parent.parent
PACKED_LAYOUT = ROOT / "scripts" / "cython" / "packed_layout.pxd"
HANDWRITTEN: dict[str, Path] = {
    "shared.packed": ROOT / "scripts" / "cython" / "_packed_c.pyx",
    "services.capture.pcap_deal": ROOT / "scripts" / "cython" / "_pcap_deal_c.pyx",
    "services.decoder.packed_batch": ROOT / "scripts" / "cython" / "_packed_batch_c.pyx",
    "services.flowtracker.packed_records": ROOT / "scripts" / "cython" / "_packed_records_c.pyx",
    "shared.flow_rows": ROOT / "scripts" / "cython" / "_flow_rows_c.pyx",
}

# pure module -> "compiled", "pure (PKTSCOPE_PURE)", "pure (not built)", "pure (stale build)"
STATUS: dict[str, str] = {}


def forced_pure() -> bool:
    """True when PKTSCOPE_PURE asks for the pure-Python reference path."""
    return os.environ.get("PKTSCOPE_PURE", "").strip() not in ("", "0")


def source_digest(path: str | Path, handwritten: Path | None = None) -> str:
    """SHA-256 of a module's source (and of its hand-written twin and the layouts it cimports):
    what a twin was built from."""
    data = Path(path).read_bytes()
    if handwritten is not None:
        for part in (handwritten, PACKED_LAYOUT):
            data += part.read_bytes() if part.exists() else b"(missing)"
    return hashlib.sha256(data).hexdigest()


def twin(name: str, source: str | None) -> ModuleType | None:
    """The compiled twin of pure module ``name`` (its source file ``source``), or None."""
    if forced_pure():
        STATUS[name] = "pure (PKTSCOPE_PURE)"
        return None
    try:
        mod = importlib.import_module(TWINS[name])
    except ImportError:
        STATUS[name] = "pure (not built)"
        return None
    if source is None or getattr(mod, "SOURCE_SHA256", None) != source_digest(source, HANDWRITTEN.get(name)):
        STATUS[name] = "pure (stale build)"
        log.warning(
            "%s: compiled module is older than %s; using pure Python (run scripts/setup)", TWINS[name], source
        )
        return None
    STATUS[name] = "compiled"
    return mod


def pure_module(name: str) -> ModuleType:
    """A fresh copy of pure module ``name`` that keeps its pure functions (loaded under another
    name, so ``adopt`` finds no twin for it): for comparing both paths in one process."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {name}")
    copy = importlib.util.spec_from_file_location(f"{name}__pure", spec.origin)
    mod = importlib.util.module_from_spec(copy)
    copy.loader.exec_module(mod)
    return mod


def adopt(namespace: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Rebind ``names`` in a pure module's globals to its twin's; True when it did.

    Called at the end of each pure module (only under its own name: the twin, compiled from the
    same file, has another ``__name__`` and so never looks for a twin of itself). Callers that
    reach these names through the module (``ipv6.walk_ext``) or import them afterwards get the
    compiled ones.
    """
    if namespace["__name__"] not in TWINS:
        return False
    mod = twin(namespace["__name__"], namespace.get("__file__"))
    if mod is None:
        return False
    for n in names:
        namespace[n] = getattr(mod, n)
    return True


def summary() -> str:
    """One line for `pktscope version` and a run's stats: the path each hot module takes."""
    for name in TWINS:
        importlib.import_module(name)
    kinds = {STATUS.get(n, "pure (not built)") for n in TWINS}
    if kinds == {"compiled"}:
        return "compiled (Cython): " + ", ".join(n.rsplit(".", 1)[1] for n in TWINS)
    return "; ".join(f"{n.rsplit('.', 1)[1]} {STATUS.get(n, 'pure (not built)')}" for n in TWINS)


def all_compiled() -> bool:
    """True when every hot module runs its compiled twin."""
    for name in TWINS:
        importlib.import_module(name)
    return all(STATUS.get(n) == "compiled" for n in TWINS)
