"""``--index auto``: a decoder replica claims the lowest free decoder index through a Redis lease.

Capture pushes to ``decoders`` endpoints, one per index, so every index must be served by exactly
one decoder. Identical replicas (``docker compose up --scale decoder=N``) cannot be told their index,
so each claims one: ``SET key owner NX PX ttl`` on the first free key of ``[0, decoders)``. A daemon
thread with its own Redis connection renews the lease while the process lives (the decoder's packet
loop never waits for Redis); a clean exit deletes it; a killed replica's index frees itself when the
lease expires. When every index is held the claimer waits and retries, saying why in the log.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

import redis

from shared.redis_conn import connect
from shared.redis_keys import Keys

log = logging.getLogger("pktscope.decoder.index")

LEASE_SECONDS = 10.0  # a killed replica's index is free again after at most this long
RETRY_SECONDS = 1.0  # how often a replica that found every index held tries again
WAIT_LOG_SECONDS = 30.0  # repeat the "every index is held" line this often while waiting

# KEYS: the index keys in index order; ARGV: owner, ttl ms. Returns the claimed position or -1.
# One script so that a claimer takes the lowest free index in one round trip; the keys share the
# hash tag {decoder}, so this also works on Redis Cluster.
CLAIM_LOWEST = """
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then return i - 1 end
end
return -1
"""

# 1: renewed; 2: the lease had expired and nobody took it, so it was taken again; 0: someone else holds it.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

# Delete only our own lease: after an expiry the key may belong to another replica.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def index_claim_key(keys: Keys, index: int) -> str:
    """String with a TTL: who holds decoder index ``index`` (``P:claim:{decoder}:<i>``).

    The hash tag ``{decoder}`` puts every index key in one Cluster slot, as CLAIM_LOWEST needs.
    """
    return keys.decoder_claim(index)


def default_owner() -> str:
    """Names the holder in Redis and in logs: host (container id under docker), pid, and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class IndexClaim:
    """One replica's claim on a decoder index: claim, heartbeat, release.

    ``on_lost`` runs in the heartbeat thread when another replica holds our index (our lease
    expired while Redis was unreachable or this process was stalled); the decoder then stops,
    since two decoders cannot serve one endpoint.
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        slots: int,
        ttl: float = LEASE_SECONDS,
        owner: str | None = None,
        on_lost: Callable[[], None] | None = None,
        cluster: bool = False,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.keys = keys
        self.slots = max(1, slots)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.renew_every = ttl / 3
        self.owner = owner or default_owner()
        self.on_lost = on_lost
        self.index: int | None = None
        self.lost = False
        self._client: redis.Redis | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def _connected(self) -> redis.Redis:
        """The Redis client, made at first use, inside the claim loop's retries: a Redis Cluster
        still forming (compose starts every container at once) raises ConnectionError when the
        client is made, and that must be waited out like any outage, not crash the decoder."""
        if self._client is None:
            client = connect(self.url, cluster=self.cluster, socket_connect_timeout=1, socket_timeout=2)
            self._claim = client.register_script(CLAIM_LOWEST)
            self._release = client.register_script(RELEASE)
            self._client = client
        return self._client

    r = property(_connected)

    @property
    def key(self) -> str:
        if self.index is None:
            raise RuntimeError("no index claimed")
        return index_claim_key(self.keys, self.index)

    def all_keys(self) -> list[str]:
        return [index_claim_key(self.keys, i) for i in range(self.slots)]

    # --- claiming ----------------------------------------------------------------------------
    def try_claim(self) -> int | None:
        """Take the lowest free index now, or return None when all are held. Raises RedisError."""
        self._connected()  # raises RedisError while Redis is unreachable: the caller retries
        got = int(self._claim(keys=self.all_keys(), args=[self.owner, self.ttl_ms]))
        if got < 0:
            return None
        self.index = got
        self.lost = False
        return got

    def holders(self) -> list[str | None]:
        """Who holds each index (None: free), for the waiting log line."""
        return self.r.mget(self.all_keys())

    def claim(self, stop: Callable[[], bool] = lambda: False, retry: float = RETRY_SECONDS) -> int | None:
        """Block until an index is ours; None if ``stop()`` turned true first."""
        next_log = 0.0
        while not stop():
            reason = ""
            try:
                index = self.try_claim()
                if index is not None:
                    log.info(
                        "claimed decoder index %d of %d (lease %.1fs, owner %s)",
                        index,
                        self.slots,
                        self.ttl_ms / 1000,
                        self.owner,
                    )
                    return index
                held = ", ".join(f"{i}: {h}" for i, h in enumerate(self.holders()) if h)
                reason = (
                    f"every decoder index in [0, {self.slots}) is held ({held}); waiting for one to "
                    f"free (a killed replica's lease expires after {self.ttl_ms / 1000:.1f}s). More "
                    f'decoder replicas than "decoders" in pipeline.json?'
                )
            except redis.RedisError as exc:
                reason = f"cannot claim a decoder index: redis {self.url} unreachable ({exc}); retrying"
            now = time.monotonic()
            if now >= next_log:
                next_log = now + WAIT_LOG_SECONDS
                log.warning("%s", reason)
            _sleep_unless(stop, retry)
        return None

    # --- keeping and giving back -------------------------------------------------------------
    def start_heartbeat(self) -> None:
        """Renew the lease every ttl/3 from a daemon thread with its own Redis connection."""
        if self._thread is not None:
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._beat, name="decoder-index-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        r = None
        key = self.key
        failing = False
        try:
            while not self._halt.wait(self.renew_every):
                try:
                    if r is None:
                        # made here, in the retried part: a Cluster client asks a node for the slot
                        # map as it is made, and a failure then (a name not resolvable for a moment)
                        # ended this thread, so the lease expired under a running decoder
                        r = connect(
                            self.url,
                            cluster=self.cluster,
                            socket_connect_timeout=1,
                            socket_timeout=min(2.0, self.renew_every),
                        )
                    status = int(r.register_script(RENEW)(keys=[key], args=[self.owner, self.ttl_ms]))
                except redis.RedisError as exc:
                    if not failing:
                        log.warning("cannot renew the lease on decoder index %d: %s", self.index, exc)
                    failing = True
                    continue
                if failing:
                    log.info("lease on decoder index %d renewed again", self.index)
                    failing = False
                if status == 2:
                    log.warning("lease on decoder index %d had expired; took it again", self.index)
                elif status == 0:
                    self.lost = True
                    log.error(
                        "decoder index %d now belongs to another replica (%s): our lease expired; stopping",
                        self.index,
                        _holder(r, key),
                    )
                    if self.on_lost is not None:
                        self.on_lost()
                    return
        finally:
            if r is not None:
                r.close()

    def stop_heartbeat(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def renew_once(self) -> int:
        """One renewal from the calling thread (tests, tools): 1 renewed, 2 re-taken, 0 lost."""
        return int(self.r.register_script(RENEW)(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        """Stop renewing and delete our lease, so the next replica gets the index at once."""
        self.stop_heartbeat()
        if self.index is None:
            return
        try:
            if self._release(keys=[self.key], args=[self.owner]):
                log.info("released decoder index %d", self.index)
        except redis.RedisError as exc:
            log.warning(
                "could not release decoder index %d (%s): it frees when the lease expires", self.index, exc
            )
        self.index = None

    def close(self) -> None:
        self.release()
        if self._client is not None:
            self._client.close()


def _holder(r: redis.Redis, key: str) -> str:
    try:
        return str(r.get(key))
    except redis.RedisError:
        return "unknown"


def _sleep_unless(stop: Callable[[], bool], seconds: float) -> None:
    """Sleep in short steps so that a stop signal ends the wait promptly."""
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))
