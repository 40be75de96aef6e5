"""The messages between the launcher client and the zygote, shared by both ends.

The client runs as ``python -S -I client.py`` and loads this file beside it by path, so it imports
only built-in modules: ``_socket`` and ``marshal`` (``socket``, ``json``, ``array`` and the ``enum``
and ``collections`` they pull in were 8 ms of the client's 17 ms start-up). marshal is safe here: both ends are the same Python,
and only the run's owner can reach the socket (mode 0600 in a private directory).

One SOCK_SEQPACKET message per dict, so no framing is needed; the request carries the client's
stdin/stdout/stderr and the child's end of a status socket pair as SCM_RIGHTS.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

MAX_MESSAGE = 1 << 20  # a request holds the environment: far below this
MAX_FDS = 4
# request: {"module", "argv", "env", "cwd", "umask"} + fds [stdin, stdout, stderr, status]
# zygote -> client: {"pid": N} once forked, then {"status": RAW_WAIT_STATUS} when it ended;
#                   {"error": TEXT} instead of "pid" when it cannot fork (the client execs)
# child -> client on the status pair: {"code": N} just before it exits


def send(sock: _socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One message, with file descriptors attached if given."""
    # C ints in native order (array.array("i") would import collections.abc into the client)
    packed = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds or ())
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, packed)] if fds else []
    sock.sendmsg([marshal.dumps(message)], ancillary)


def receive(sock: _socket.socket, maxfds: int = 0) -> tuple[dict | None, list[int]]:
    """One message and its file descriptors; (None, []) at end of stream (the peer is gone)."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(
            MAX_MESSAGE, _socket.CMSG_LEN(maxfds * 4) if maxfds else 0, _socket.MSG_CMSG_CLOEXEC
        )
    except (ConnectionResetError, BrokenPipeError):
        return None, []
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, len(payload) - len(payload) % 4, 4)
            ]
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = marshal.loads(data)
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        raise ValueError("launcher message is not a dict")
    return message, fds
