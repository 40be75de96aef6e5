"""The detector pool's end of the sensor link: a CURVE server that refuses, logs and counts
every sensor whose key is not on its list.

Each detector shard of a pool binds a PULL socket on TCP (``--listen`` port + shard index).
With keys (``pktscope keys``) it is a CURVE server, and ZeroMQ's ZAP handler (pyzmq's
``ThreadAuthenticator``) lets in only clients whose public key is in ``<keys>/authorized/``.
A refused sensor never gets a frame through; the refusal is logged with its key and counted
(``auth_refused`` in the shard's stats), so a forgotten key shows instead of a silent sensor.
An admitted connection's ZAP user id is the name of its key file (``authorized/web-1.key``:
``web-1``); the detector takes only frames whose sensor name is that, so one sensor's key
cannot write into another sensor's entities.
Without keys, plain TCP needs ``--insecure-listen`` (checked by ``pktscope run``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from shared.curve import CurveError, is_local_endpoint
from shared.sockets import bind_pull

log = logging.getLogger("pktscope.pool")


class CountingAuthenticator(ThreadAuthenticator):
    """ThreadAuthenticator that logs and counts the CURVE clients it refuses."""

    def __init__(self, ctx: zmq.Context, authorized: Path) -> None:
        super().__init__(ctx)
        self.authorized = authorized
        self.refused = 0
        self.refused_keys: set[str] = set()
        self._lock = threading.Lock()
        self.names: dict[bytes, str] = {}  # raw public key -> its file's name in authorized/
        for path in sorted(authorized.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError):
                continue
            self.names[z85.decode(public)] = path.stem

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The sensor a key belongs to: its key file's name (frames must carry that name)."""
        return self.names.get(client_public_key, "")

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode("ascii", "replace")
            with self._lock:
                self.refused += 1
                first = key not in self.refused_keys
                if len(self.refused_keys) < 1000:
                    self.refused_keys.add(key)
            if first:  # a refused sensor retries every second or so: log each key once
                log.warning(
                    "refused a sensor: CURVE key %s is not authorized (%s); copy its clients/NAME.key "
                    "into %s to let it in",
                    key,
                    reason.decode("ascii", "replace"),
                    self.authorized,
                )
        return allowed, reason


def bind_pool_pull(
    ctx: zmq.Context, endpoint: str, hwm: int, keys_dir: str
) -> tuple[zmq.Socket, CountingAuthenticator | None]:
    """The shard's PULL for sensors: CURVE server when ``keys_dir`` is set, plain TCP otherwise."""
    if not keys_dir:
        if not is_local_endpoint(endpoint):
            log.warning("flow events on %s arrive unencrypted from anyone (--insecure-listen)", endpoint)
        return bind_pull(ctx, endpoint, hwm), None
    kd = Path(keys_dir)
    try:
        public, secret = zmq.auth.load_certificate(str(kd / "server.key_secret"))
    except (OSError, ValueError) as exc:
        raise CurveError(
            f"cannot read {kd / 'server.key_secret'}: {exc} (make keys with `pktscope keys`)"
        ) from None
    auth = CountingAuthenticator(ctx, kd / "authorized")
    auth.start()
    auth.configure_curve(domain="*", location=str(kd / "authorized"))
    sock = ctx.socket(zmq.PULL)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    log.info("sensors on %s: CURVE, keys authorized in %s", endpoint, kd / "authorized")
    return sock, auth
