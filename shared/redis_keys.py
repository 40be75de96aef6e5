"""Every Redis key pktscope uses, in one place (documented in docs/redis.md).

Keys that belong to one entity carry a hash tag ``{entity}`` so that all of an entity's keys
land in one Redis Cluster slot and a Lua script may touch them together.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "pktscope") -> None:
        self.prefix = prefix

    # --- service status ----------------------------------------------------------------------
    def stats(self, service: str) -> str:
        """Hash: one service's counters and heartbeat (written about once a second)."""
        return f"{self.prefix}:stats:{service}"

    def services(self) -> str:
        """Set: names of services that have written stats."""
        return f"{self.prefix}:services"

    def decoder_claim(self, index: int) -> str:
        """String with a TTL: which process holds decoder index ``index`` (``--index auto``)."""
        return f"{self.prefix}:claim:{{decoder}}:{index}"

    # --- alerts --------------------------------------------------------------------------------
    def alerts(self) -> str:
        """Stream: the durable alert history, capped with MAXLEN ~."""
        return f"{self.prefix}:alerts"

    def alerts_appended(self) -> str:
        """Sorted set: digests of alerts appended outside the decision scripts (Redis Cluster).

        Its hash tag is the stream's whole name, so it shares the stream's slot and one script
        can check and append atomically, while the stream keeps its untagged name.
        """
        return f"{{{self.alerts()}}}:appended"

    # --- baseline --------------------------------------------------------------------------
    def learning(self) -> str:
        """Hash: learning window start/end in packet time."""
        return f"{self.prefix}:learning"

    def entities(self) -> str:
        """Sorted set: entity -> last seen (packet time)."""
        return f"{self.prefix}:entities"

    def entity(self, entity: str) -> str:
        """Hash: first/last seen and facts about one entity."""
        return f"{self.prefix}:ent:{{{entity}}}"

    def entity_set(self, entity: str, what: str) -> str:
        """Set: one entity's known destinations ('dest'), countries ('cc'), ASes ('asn')."""
        return f"{self.prefix}:ent:{{{entity}}}:{what}"

    def cooldown(self, entity: str) -> str:
        """Hash: de-duplication key -> packet time of the last alert, for one entity."""
        return f"{self.prefix}:ent:{{{entity}}}:cooldown"

    def receiver_seq(self, receiver: str) -> str:
        """Hash: sender -> last frame sequence number processed by a receiver (gap counting)."""
        return f"{self.prefix}:seq:{receiver}"


_GLOB_SPECIAL = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis SCAN/KEYS pattern: a prefix like ``pkt*`` is a name, never a wildcard."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)
