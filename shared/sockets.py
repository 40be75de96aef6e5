"""ZeroMQ socket setup shared by the services.

Every socket gets a high-water mark (``hwm`` frames). What happens when it is reached:
a PUSH socket blocks the sender (offline replay: backpressure, nothing is lost) or, when
sent with NOBLOCK (live capture), raises ``zmq.Again`` and the caller drops and counts the
frame. PUB drops silently for a slow subscriber (that is ZeroMQ's PUB contract); the Redis
alert stream is the durable copy.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import zmq

# After its end of stream a sender keeps its last frames (and the EOS marker) queued this long
# for a receiver that is slow or being restarted by the supervisor, then gives up. Stopping
# (SIGTERM, Ctrl-C) uses the short LINGER set in connect_push instead.
END_OF_STREAM_LINGER_MS = 60_000
# A PUSH that connects before its peer has bound (the services of a run start together) tries
# again after RECONNECT_IVL_MS, doubling up to RECONNECT_IVL_MAX_MS. ZeroMQ's default, a flat
# 100 ms, held a replay's first frames that long or longer: a 5-packet replay's end of stream
# reached the decoder 165 ms after capture sent it; 10 ms then backing off costs nothing idle.
RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 1000


def _prepare_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://") :])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def bind_pull(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    _prepare_ipc(endpoint)
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    _restrict(endpoint)
    return sock


def connect_push(ctx: zmq.Context, endpoint: str, hwm: int, immediate: bool = False) -> zmq.Socket:
    """PUSH to a bound PULL. ``immediate`` queues nothing while the peer is absent (live capture)."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(endpoint)
    return sock


def bind_pub(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    _prepare_ipc(endpoint)
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    _restrict(endpoint)
    return sock


def _restrict(endpoint: str) -> None:
    """ipc sockets are files: only the owner may connect (the run dir is 0700 too)."""
    if endpoint.startswith("ipc://"):
        with contextlib.suppress(OSError):
            os.chmod(endpoint[len("ipc://") :], 0o600)
