"""Opening Redis the same way everywhere (redis-py with hiredis, unix socket or TCP URL, or a Cluster)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.retry import Retry

from shared.resp_packer import DirectPacker

log = logging.getLogger(__name__)

CONNECT_RETRY_MAX = 2.0  # seconds: the longest wait between tries for a Redis that is not up yet
QUIET_WAIT = 1.0  # seconds of tries before a Redis that is not up yet is warned about (it may be starting)

# Errors that mean "Redis is not answering right now" (paused, restarting, a Cluster failing a
# master over): wait and try again, never give up the work. A cluster adds its own kinds.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
)


def _script_routing() -> Any:
    """A policy resolver that routes EVAL/EVALSHA by their declared keys.

    Without it a Cluster pipeline asks the default node (``COMMAND GETKEYS``) where each script
    goes: one more round trip per script, and when the default node is the master that just
    died, every pipeline fails until the process restarts.
    """
    try:
        from redis._parsers.commands import CommandPolicies, RequestPolicy, ResponsePolicy
        from redis.commands.policies import BasePolicyResolver, StaticPolicyResolver
    except ImportError:  # another redis-py: its own routing
        return None

    keyed = CommandPolicies(
        request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED
    )

    class ScriptsByKeys(BasePolicyResolver):
        def __init__(self, fallback: Any = None) -> None:
            super().__init__({"core": {"evalsha": keyed, "eval": keyed}}, fallback or StaticPolicyResolver())

        def with_fallback(self, fallback: Any) -> Any:
            return ScriptsByKeys(fallback)

    return ScriptsByKeys()


def recover(r: Any) -> None:
    """After a Cluster call failed: re-read the slot map and move off a default node that died.

    redis-py refreshes the map itself on most failures, but keeps sending keyless commands to
    its default node (the URL's node) even when that node is the master that was failed over.
    """
    if not is_cluster(r):
        return
    try:
        r.nodes_manager.initialize()
        r.replace_default_node()
    except Exception:  # noqa: BLE001 - mid-failover; the caller retries and we come back here
        pass


class _Cluster(RedisCluster):
    """RedisCluster whose pipelines route scripts like the client does (redis-py does not hand
    its ``policy_resolver`` on to pipelines)."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        if hasattr(pipe, "_policy_resolver"):
            pipe._policy_resolver = self._policy_resolver
        return pipe


def connect(url: str, cluster: bool = False, **kw: Any) -> redis.Redis:
    """Connect to ``unix:///path/redis.sock`` or ``redis://host:port/db``; responses decoded as text.

    ``cluster``: ``url`` names one node of a Redis Cluster (``--redis-cluster``); the client learns
    the others from it, follows MOVED/ASK and, when a master dies, refreshes the slot map and
    retries (the callers' own retry loops wait out the seconds a failover takes).
    """
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_connect_timeout", 5)
    if cluster:
        # a few quick tries per call (each one re-reads the slot map); longer waits are the
        # callers' backoff loops, which count the outage
        kw.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 4))
        kw.setdefault("require_full_coverage", False)  # serve the healthy slots during a failover
        resolver = _script_routing()
        if resolver is not None:
            kw.setdefault("policy_resolver", resolver)
        try:
            return _Cluster.from_url(url, **kw)  # type: ignore[return-value]
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                raise
            # no node answered the slot map: the callers' "Redis unreachable" handling applies
            raise redis.ConnectionError(f"Redis Cluster at {redact(url)}: {exc}") from exc
    # commands packed by hiredis directly (shared/resp_packer.py: 6x cheaper for the detector's scripts)
    kw.setdefault("command_packer", DirectPacker(kw.get("encoding", "utf-8"), kw.get("encoding_errors", "strict")))
    return redis.Redis.from_url(url, **kw)


def is_cluster(r: Any) -> bool:
    """True for a Redis Cluster client: scripts touch one slot each, EVALSHA is sent raw in pipelines."""
    return isinstance(r, RedisCluster)


def evalsha(pipe: Any, sha: str, keys: list[str], args: list[Any] | tuple[Any, ...]) -> None:
    """Queue EVALSHA on ``pipe``; a Cluster pipeline refuses ``pipe.evalsha`` but routes the raw command by its keys."""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect_made(url: str, stop: Any, cluster: bool = False, who: str = "", **kw: Any) -> redis.Redis | None:
    """``connect(url, cluster, **kw)``, made again (0.05 s doubling to ``CONNECT_RETRY_MAX``) while
    it raises; None once ``stop`` is set. A plain client is made without a word to Redis, but a
    Cluster client asks a node for the slot map as it is made: a name not resolvable yet (compose
    starts every container at once) or a cluster not up yet raised, and a service that only wants
    a client for its stats, and writes them whenever Redis answers, died of it at start."""
    return _retrying(lambda: connect(url, cluster=cluster, **kw), url, stop, who, first_delay=0.05)


def connect_until_ready(url: str, stop: Any, cluster: bool = False, who: str = "") -> redis.Redis | None:
    """A client that has answered PING; tries again (0.01 s doubling to ``CONNECT_RETRY_MAX``)
    while Redis is not up yet, e.g. a new Cluster settling. None once ``stop`` is set.

    Every service needs Redis before its loop: a short cap keeps a service from sleeping
    seconds past the moment Redis comes up (and `pktscope status` from missing it meanwhile).
    The first tries are close together: the private redis-server starts beside the services,
    and a first wait of 0.1 s, taken by the first services forked, held every replay's start
    back by that much. Only a Redis still missing after ``QUIET_WAIT`` s is warned about.
    """

    def pinged() -> redis.Redis:
        r = connect(url, cluster=cluster)
        r.ping()
        return r

    return _retrying(pinged, url, stop, who, first_delay=0.01)


def _retrying(make: Any, url: str, stop: Any, who: str, first_delay: float) -> redis.Redis | None:
    """``make()`` until it does not raise a RedisError (``first_delay`` doubling to
    ``CONNECT_RETRY_MAX`` between tries, warned about after ``QUIET_WAIT`` s); None once ``stop``."""
    delay = first_delay
    began = time.monotonic()
    while not stop:
        try:
            return make()
        except redis.RedisError as exc:
            level = logging.WARNING if time.monotonic() - began >= QUIET_WAIT else logging.DEBUG
            log.log(level, "%sRedis %s not reachable (%s); retrying in %.2f s", f"{who}: " if who else "", redact(url), exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX)
    return None
