"""The messages between the launcher client and the zygote, shared by both ends.

Stdlib only, no package imports: the client runs it as ``python -S -I client.py`` and loads this
file beside it by path. One SOCK_SEQPACKET message per JSON object, so no framing is needed; the
request carries the client's stdin/stdout/stderr and the child's end of a status socket pair as
SCM_RIGHTS.
"""

from __future__ import annotations

import json
import socket

MAX_MESSAGE = 1 << 20  # a request holds the environment: far below this
# request: {"module", "argv", "env", "cwd", "umask"} + fds [stdin, stdout, stderr, status]
# zygote -> client: {"pid": N} once forked, then {"status": RAW_WAIT_STATUS} when it ended;
#                   {"error": TEXT} instead of "pid" when it cannot fork (the client execs)
# child -> client on the status pair: {"code": N} just before it exits


def send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One message, with file descriptors attached if given."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket, maxfds: int = 0) -> tuple[dict | None, list[int]]:
    """One message and its file descriptors; (None, []) at end of stream (the peer is gone)."""
    try:
        if maxfds:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, maxfds)
        else:
            data, fds = sock.recv(MAX_MESSAGE), []
    except (ConnectionResetError, BrokenPipeError):
        return None, []
    if not data:
        for fd in fds:
            _close(fd)
        return None, []
    return json.loads(data), list(fds)


def _close(fd: int) -> None:
    import os

    try:  # noqa: SIM105 - contextlib is one import more in the client's start-up
        os.close(fd)
    except OSError:
        pass
