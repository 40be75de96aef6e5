"""`pktscope run` flags of the observation parts: --eve-log, --notify, --metrics-listen."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from services.cli.common import CliError
from shared.config import PipelineConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eve-log",
        default=None,
        metavar="FILE",
        help="append Suricata-style EVE JSON (alert, flow, dns, tls, http, quic) to FILE; reopened on SIGHUP",
    )
    p.add_argument(
        "--notify",
        action="append",
        default=None,
        metavar="URL",
        help="send alerts to this Apprise URL (repeatable): json://host/path, slack://..., ntfy://..., "
        "mailto://..., syslog://, desktop:// (notify-send); per URL options as query parameters "
        "min_severity=warning, rate_limit=5/60, group_window=30 (see README)",
    )
    p.add_argument(
        "--metrics-listen",
        default=None,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9477)",
    )


def check_listen(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` split and checked; a CliError says how to write it."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise CliError(
            f"--metrics-listen {value!r}: write an address and a port, e.g. 127.0.0.1:9477"
        ) from None
    return host, number


def apply(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    """Copy the flags into the pipeline config, each checked."""
    cfg.observer = True  # `pktscope run` always runs the observer (live view, EVE log)
    if getattr(args, "eve_log", None):
        path = Path(args.eve_log).resolve()
        if path.is_dir():
            raise CliError(f"--eve-log {args.eve_log} is a directory; give a file path")
        if not path.parent.is_dir():
            raise CliError(f"--eve-log {args.eve_log}: directory {path.parent} does not exist")
        cfg.eve_log = str(path)
    if getattr(args, "notify", None):
        from services.notifier.targets import TargetError, parse_target

        for url in args.notify:
            try:
                parse_target(url)
            except TargetError as exc:
                raise CliError(f"--notify {url!r}: {exc}") from None
        cfg.notify = list(args.notify)
    if getattr(args, "metrics_listen", None):
        check_listen(args.metrics_listen)
        cfg.metrics_listen = args.metrics_listen


NOTIFY_DRAIN_TIMEOUT = 120.0  # seconds a finished replay waits for its notifications to go out


OBSERVER_TIMEOUT = 60.0  # seconds a finished replay waits for the observer's last writes


def wait_for_observation(r, keys, cfg: PipelineConfig, interrupted, pause=None) -> None:
    """After a replay: the observer's last writes (live view, EVE log), then the notifications.
    ``pause(seconds)`` waits between two looks (`pktscope run`'s returns when a service ends)."""
    import time

    import redis

    pause = pause or time.sleep
    deadline = time.time() + OBSERVER_TIMEOUT
    while not interrupted() and time.time() < deadline:
        try:
            eos, run_id = r.hmget(keys.stats("observer"), "eos", "run_id")
        except redis.RedisError:
            eos = run_id = None
        if eos == "1" and run_id == cfg.run_id:
            break
        pause(0.005)  # the observer's last write follows the detector's end within milliseconds
    wait_for_notifier(r, keys, cfg, interrupted)


def wait_for_notifier(r, keys, cfg: PipelineConfig, interrupted, timeout: float = NOTIFY_DRAIN_TIMEOUT) -> None:
    """After a replay: wait until the notifier has delivered every alert (it retries failures).

    What is still undelivered at the timeout stays pending in Redis and goes out on the next start.
    """
    import sys
    import time

    import redis

    if not cfg.notify:
        return
    deadline = time.time() + timeout
    said = False
    while not interrupted():
        try:
            drained, run_id, pending = r.hmget(keys.stats("notifier"), "drained", "run_id", "alerts_pending")
        except redis.RedisError:
            drained = run_id = pending = None
        if drained == "1" and run_id == cfg.run_id:
            return
        if time.time() > deadline:
            print(
                f"pktscope: {pending or 'some'} alert(s) not yet delivered to --notify targets; they stay "
                "queued in Redis and go out when the pipeline next runs",
                file=sys.stderr,
            )
            return
        if not said and time.time() > deadline - timeout + 2:
            print("pktscope: waiting for notifications to be delivered...", file=sys.stderr)
            said = True
        time.sleep(0.1)
