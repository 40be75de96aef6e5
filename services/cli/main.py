"""The `pktscope` command: run the pipeline, read captures, follow alerts, inspect status and baseline."""

from __future__ import annotations

import argparse
import importlib
import sys

from services.cli.common import CliError

# Subcommand modules, each with add_parser(subparsers); imported lazily so that a missing
# optional part never breaks the others.
SUBCOMMANDS = (
    "services.cli.run",
    "services.cli.read",
    "services.cli.alerts",
    "services.cli.status",
    "services.cli.baseline",
    "services.cli.connections",
    "services.cli.stop",
    "services.cli.keys",
    "services.cli.capture",
    "services.cli.diff",
    "services.cli.inspect",
    "services.cli.version",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pktscope",
        description="Network egress monitor: what is this machine talking to, and is any of it new?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(name)
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"pktscope: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
