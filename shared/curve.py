"""CURVE encryption and client authentication for the one socket that may leave the machine.

Every internal endpoint is an ``ipc://`` file in the private run directory. Only the alerts PUB
socket can be put on TCP (``--alerts-endpoint``); bound beyond loopback it needs CURVE keys
(``pktscope keys``): the detector is the CURVE server, and only subscribers whose public key is
in ``<keys>/authorized/`` may connect (ZeroMQ's ZAP handler, ``zmq.auth``). Without keys,
``--insecure-listen`` must be given, and a warning is printed at every start.

Key directory layout (``pktscope keys``; secret files 0600, directories 0700)::

    server.key  server.key_secret          the detector's
    clients/NAME.key  clients/NAME.key_secret   a subscriber's (copy to the subscribing machine)
    authorized/NAME.key                     public keys allowed to subscribe
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # zmq is imported where used: `pktscope run` checks endpoints and keys before it starts the
    # launcher's zygote, and zmq (10-20 ms) would delay that start; zmq.auth.thread brings asyncio in
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("pktscope.curve")

LOOPBACK_NAMES = frozenset(("localhost", "ip6-localhost"))


class CurveError(Exception):
    """Keys missing or unreadable; the message says how to make them."""


def is_local_endpoint(endpoint: str) -> bool:
    """True when nobody outside this machine can connect: ipc/inproc, or TCP on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: may be reachable from elsewhere


def has_server_keys(keys_dir: Path) -> bool:
    return (keys_dir / "server.key_secret").is_file()


def create_keys(keys_dir: Path, client: str = "client") -> dict[str, Path]:
    """Make the server keys (once) and a subscriber's keys (once per name); authorize the subscriber."""
    import zmq.auth

    for sub in ("", "clients", "authorized"):
        (keys_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    if not has_server_keys(keys_dir):
        zmq.auth.create_certificates(str(keys_dir), "server")
    clients = keys_dir / "clients"
    if not (clients / f"{client}.key_secret").is_file():
        zmq.auth.create_certificates(str(clients), client)
    shutil.copyfile(clients / f"{client}.key", keys_dir / "authorized" / f"{client}.key")
    for secret in (keys_dir / "server.key_secret", clients / f"{client}.key_secret"):
        os.chmod(secret, 0o600)
    return {
        "server_public": keys_dir / "server.key",
        "client_secret": clients / f"{client}.key_secret",
        "authorized": keys_dir / "authorized",
    }


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, private = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read CURVE key {path}: {exc} (make keys with `pktscope keys`)") from None
    if secret and private is None:
        raise CurveError(f"{path} holds no secret key (make keys with `pktscope keys`)")
    return public, private


def bind_alerts_pub(
    ctx: zmq.Context, endpoint: str, hwm: int, keys_dir: str, insecure: bool
) -> tuple[zmq.Socket, ThreadAuthenticator | None]:
    """The alerts PUB socket: CURVE server when ``keys_dir`` is set, plaintext otherwise."""
    import zmq

    from shared.sockets import bind_pub

    if not keys_dir:
        if not is_local_endpoint(endpoint):
            log.warning(
                "alerts on %s go unencrypted and unauthenticated to anyone who connects (--insecure-listen)",
                endpoint,
            )
        return bind_pub(ctx, endpoint, hwm), None
    kd = Path(keys_dir)
    public, secret = _load(kd / "server.key_secret", secret=True)
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(kd / "authorized"))
    sock = ctx.socket(zmq.PUB)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    log.info("alerts on %s: CURVE, subscribers authorized in %s", endpoint, kd / "authorized")
    return sock, auth


def curve_client(sock: zmq.Socket, keys_dir: Path, client: str = "client") -> None:
    """Make ``sock`` a CURVE client of the detector whose keys are in ``keys_dir``."""
    server_public, _ = _load(keys_dir / "server.key", secret=False)
    public, secret = _load(keys_dir / "clients" / f"{client}.key_secret", secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
