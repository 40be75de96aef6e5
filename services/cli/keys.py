"""`pktscope keys`: CURVE keys for an alerts endpoint that other machines can reach."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli.common import CliError
from services.detector.sensor_entity import valid_sensor_name
from shared.curve import create_keys


def _default_dir() -> Path:
    from services.cli.run import default_state_dir

    return default_state_dir() / "curve"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="make CURVE keys for a TCP alerts endpoint or a detector pool (encryption + client authentication)",
        description="Make the detector's CURVE key pair (once) and a subscriber's key pair, and "
        "authorize that subscriber. `pktscope run --alerts-endpoint tcp://ADDR:PORT` then uses them; "
        "a subscriber on another machine needs the keys directory's server.key and its "
        "clients/NAME.key_secret (`pktscope alerts follow --endpoint ... --curve-keys DIR --client NAME`). "
        "A detector pool (`pktscope run --role pool`) uses the same keys: make one client per sensor, "
        "named as the sensor (--client web-1), and give that sensor server.key and clients/web-1.key_secret.",
    )
    p.add_argument("--dir", type=Path, default=None, help=f"key directory (default {_default_dir()})")
    p.add_argument(
        "--client", default="client", help="subscriber or sensor name (default client); run again for more"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keys_dir = (args.dir or _default_dir()).resolve()
    if not valid_sensor_name(args.client):  # a sensor's key is named as the sensor (host-name-like)
        raise CliError(f"--client {args.client!r}: use letters, digits, '.', '-' and '_' (not first)")
    try:
        made = create_keys(keys_dir, args.client)
    except OSError as exc:
        raise CliError(f"cannot write keys in {keys_dir}: {exc}") from None
    print(f"pktscope: CURVE keys in {keys_dir}")
    print(f"  detector public key   {made['server_public']}")
    print(f"  subscriber {args.client!r} key  {made['client_secret']} (keep it secret; copy it with server.key)")
    print(f"  authorized keys       {made['authorized']}/ (delete a file there to revoke a subscriber)")
    return 0
