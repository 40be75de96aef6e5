"""The `pktscope` command: run the pipeline, read captures, follow alerts, inspect status and baseline."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
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
    "services.cli.systemd",
    "services.cli.capture",
    "services.cli.diff",
    "services.cli.inspect",
    "services.cli.version",
)


# commands whose module is not named after them
OTHER_NAMES = {"interfaces": "services.cli.capture"}


def module_for(argv: list[str]) -> str | None:
    """The one subcommand module ``argv`` needs, when its first word names a command.

    Importing all of them costs 0.15 s (inspect, read, filters...) before `pktscope run` can
    even start supervisord; --help and unknown words still get the full parser.
    """
    if not argv or argv[0].startswith("-"):
        return None
    name = OTHER_NAMES.get(argv[0], f"services.cli.{argv[0]}")
    return name if name in SUBCOMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line parser, with every subcommand or with just module ``only``'s."""
    parser = argparse.ArgumentParser(
        prog="pktscope",
        description="Network egress monitor: what is this machine talking to, and is any of it new?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (only,) if only else SUBCOMMANDS:
        module = importlib.import_module(name)
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(module_for(argv))
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


# Commands that end by leaving nothing open: their process skips the interpreter's teardown of
# every module (redis-py, rich, supervisor's XML-RPC), 15-20 ms of each `pktscope run`'s wall
# and CPU after its pipeline has stopped. Their atexit handlers still run and output is flushed.
QUICK_EXIT = frozenset({"run"})


def entry() -> None:
    """The installed `pktscope` script (and ``python -m services.cli.main``)."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in QUICK_EXIT and sys.getprofile() is None and sys.gettrace() is None:
        # (under a profiler or a tracer the interpreter ends as usual: they write at its end)
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: main said so already
                stream.flush()
        os._exit(code & 0xFF)
    sys.exit(code)


if __name__ == "__main__":
    entry()
