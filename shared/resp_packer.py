"""Redis commands packed by hiredis in one call, without redis-py's per-argument encoding.

redis-py (8.x) already packs with ``hiredis.pack_command``, but first runs every argument through
its ``Encoder.encode`` in a Python generator. The detector's pipelines carry ~14,500 EVALSHA
commands of a dozen arguments each on the 5x bench capture, and that encoding was ~20% of the
detector's samples (py-spy). Measured: packing 14,500 such commands took 0.256 CPU s through
redis-py's packer and 0.043 s through ``hiredis.pack_command`` directly (one process, same
commands). This is hand-written on a measured hot path: the rest stays redis-py's.

``hiredis.pack_command`` takes ``str`` (UTF-8), ``bytes``, ``int`` and ``float`` (written as
``repr`` writes it, as redis-py does) and refuses anything else with ``TypeError``. Such a command
(a ``bool``, ``None``, a ``memoryview``) and a command whose name has a space (``CLIENT SETNAME``,
which redis-py splits into words) go to redis-py's own packer, so its errors (``DataError``) and
its behaviour stay what callers expect.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

BUFFER_CUTOFF = 6000  # redis-py's default: larger values are sent as their own buffers


class DirectPacker:
    """A redis-py ``command_packer``: ``pack(*args)`` -> list of buffers to send."""

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        encode = Encoder(encoding, errors, False).encode
        self._utf8 = encoding.replace("-", "").lower() == "utf8" and errors == "strict"
        self._fallback = HiredisRespSerializer(PythonRespSerializer(BUFFER_CUTOFF, encode).pack, encode)
        self._pack = hiredis.pack_command

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        if self._utf8 and type(first) is str and " " not in first:
            try:
                return [self._pack(args)]
            except TypeError:
                pass  # a type hiredis does not take: redis-py's packer says what is wrong
        return self._fallback.pack(*args)
