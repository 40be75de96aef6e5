"""Redis keys the detector needs beyond shared.redis_keys.Keys (documented in docs/redis.md)."""

from __future__ import annotations

from shared.redis_keys import Keys, glob_escape

SET_DEST, SET_COUNTRY, SET_ASN = "dest", "cc", "asn"
SET_CRED = "cred"  # protocol|user|destination of cleartext logins already alerted
ENTITY_SETS = (SET_DEST, SET_COUNTRY, SET_ASN)


class DetectorKeys(Keys):
    """Keys plus the per-entity volume hash (same ``{entity}`` hash tag, so one Cluster slot)."""

    def volume(self, entity: str) -> str:
        """Hash: the entity's EWMA mean/variance, interval count and the open interval."""
        return f"{self.prefix}:ent:{{{entity}}}:vol"

    def entity_keys(self, entity: str, with_cooldown: bool = False) -> list[str]:
        """Every baseline key of one entity (what `baseline reset ENTITY` deletes)."""
        out = [self.entity(entity), self.volume(entity)]
        out += [self.entity_set(entity, what) for what in ENTITY_SETS]
        if with_cooldown:
            out.append(self.cooldown(entity))
        return out

    def entity_pattern(self) -> str:
        """SCAN pattern matching every per-entity key of this prefix, and only those.

        The prefix is escaped (``pkt*`` matches itself, not ``pktscope``), and every entity key
        starts ``P:ent:{``, so a prefix that happens to begin with ours plus ``:ent:`` is not hit.
        """
        return f"{glob_escape(self.prefix)}:ent:{{*"
