"""pktscope's display filters against tshark's: the frame numbers each keeps, capture by capture.

Used by tests/test_filter_conformance.py and runnable by hand for the per-filter report:

    .venv/bin/python tests/filter_conformance.py [CAPTURE ...]

pktscope runs in-process: each capture is decoded once (services/cli/decode_file.py, the loop
of `pktscope read`) and every compiled filter is evaluated on each packet. tshark answers come
from tests/tshark_oracle.py (one run per capture, cached).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tshark_oracle  # noqa: E402
from filter_conformance_list import FILTERS  # noqa: E402

from services.capture.sources import OfflineSource  # noqa: E402
from services.cli.decode_file import app_inspector, decoded_packets  # noqa: E402
from services.cli.filter import FilterError, compile_filter  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
Answer = tshark_oracle.Answer


def corpus_captures() -> list[Path]:
    return sorted((CORPUS / "pcaps").rglob("*.pcap")) + [CORPUS / "bench" / "sv-merged.pcap"]


def pktscope_matches(capture: Path, filters: list[str]) -> dict[str, Answer]:
    """Frame numbers each filter keeps in pktscope read (or 'error: ...' when it does not compile)."""
    compiled: list[tuple[list[int], Callable[[dict], bool]]] = []
    answers: dict[str, Answer] = {}
    for f in filters:
        try:
            pred = compile_filter(f)
        except FilterError as exc:
            answers[f] = f"error: {exc}"
            continue
        hits: list[int] = []
        answers[f] = hits
        compiled.append((hits, pred))
    for fields, _l4, _app in decoded_packets(OfflineSource(str(capture)), app_inspector()):
        num = fields["frame"]["number"]
        for hits, pred in compiled:
            if pred(fields):
                hits.append(num)
    return answers


def compare(captures: list[Path], filters: list[str]) -> dict[str, dict[Path, tuple[Answer, Answer]]]:
    """{filter: {capture: (pktscope, tshark)}} for every pair; tshark runs alongside in threads."""
    oracle: dict[Path, dict[str, Answer]] = {}

    def ask() -> None:
        oracle.update(tshark_oracle.matches_many(captures, filters))

    worker = threading.Thread(target=ask)
    worker.start()
    ours = {c: pktscope_matches(c, filters) for c in captures}
    worker.join()
    return {f: {c: (ours[c][f], oracle[c][f]) for c in captures} for f in filters}


def describe(a: Answer, b: Answer) -> str:
    if isinstance(a, str) or isinstance(b, str):
        return f"pktscope {a if isinstance(a, str) else len(a)} / tshark {b if isinstance(b, str) else len(b)}"
    only_p = sorted(set(a) - set(b))
    only_t = sorted(set(b) - set(a))
    return f"only pktscope {len(only_p)} {only_p[:5]}; only tshark {len(only_t)} {only_t[:5]}"


def report(results: dict[str, dict[Path, tuple[Answer, Answer]]]) -> tuple[int, int, str]:
    """(identical pairs, all pairs, text with the agreement per filter and each difference)."""
    lines = []
    same = total = 0
    for f, per in results.items():
        ok = sum(1 for a, b in per.values() if a == b)
        same += ok
        total += len(per)
        lines.append(f"{ok:4d}/{len(per):<4d} {f}")
        for c, (a, b) in per.items():
            if a != b:
                lines.append(f"            {c.relative_to(CORPUS) if c.is_relative_to(CORPUS) else c}: {describe(a, b)}")
    head = f"identical (capture, filter) pairs: {same}/{total} = {100.0 * same / max(1, total):.2f}%"
    return same, total, head + "\n" + "\n".join(lines)


if __name__ == "__main__":
    caps = [Path(a) for a in sys.argv[1:]] or corpus_captures()
    print(report(compare(caps, FILTERS))[2])
