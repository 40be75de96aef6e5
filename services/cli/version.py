"""`pktscope version`: the package version and whether the hot modules run compiled or as pure Python."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the version and which hot path (compiled or pure Python) runs")
    p.set_defaults(func=run)


def run(_args: argparse.Namespace) -> int:
    from shared import compiled

    try:
        v = version("pktscope")
    except PackageNotFoundError:
        v = "unknown"
    print(f"pktscope {v}")
    print(f"hot path: {compiled.summary()}")
    return 0
