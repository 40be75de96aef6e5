"""Reading and editing the baseline in Redis (for `pktscope baseline`, export and import).

The detector writes the baseline (engine.py / lua.py); this module is the operator's view of it.
"""

from __future__ import annotations

from typing import Any

import redis

from services.detector.engine import SET_CAP
from services.detector.keys import ENTITY_SETS, SET_ASN, SET_COUNTRY, SET_DEST, DetectorKeys
from shared.redis_conn import is_cluster

EXPORT_FORMAT = "pktscope-baseline"
EXPORT_VERSION = 1
VOLUME_FIELDS = ("n", "mean", "var", "last_start", "last_bytes")  # cur_* is live state, not exported


class BaselineError(ValueError):
    """A baseline file or argument that cannot be used."""


class BaselineStore:
    def __init__(self, r: redis.Redis, keys: DetectorKeys) -> None:
        # a Cluster runs MULTI only within one slot; these writes span the entity and the index
        self.atomic = not is_cluster(r)
        self.r = r
        self.keys = keys

    # --- reading ---------------------------------------------------------------------------
    def learning(self) -> dict[str, float]:
        stored = self.r.hgetall(self.keys.learning())  # also "run": which run started it
        return {k: float(stored[k]) for k in ("start", "end") if k in stored}

    def entities(self) -> list[str]:
        """Known entities, most recently seen first."""
        return list(self.r.zrevrange(self.keys.entities(), 0, -1))

    def entity(self, entity: str) -> dict[str, Any] | None:
        """Everything known about one entity, or None when it has no baseline at all."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.entity(entity))
        for what in ENTITY_SETS:
            pipe.smembers(self.keys.entity_set(entity, what))
        pipe.hgetall(self.keys.volume(entity))
        info, dest, cc, asn, volume = pipe.execute()
        if not (info or dest or cc or asn or volume):
            return None
        return {
            "entity": entity,
            "info": info,
            SET_DEST: sorted(dest),
            SET_COUNTRY: sorted(cc),
            SET_ASN: sorted(asn, key=lambda a: int(a) if a.isdigit() else 0),
            "volume": volume,
        }

    # --- editing ---------------------------------------------------------------------------
    def _register(self, pipe, entity: str) -> None:
        pipe.zadd(self.keys.entities(), {entity: 0}, nx=True)

    def allow(
        self,
        entity: str,
        label: str | None = None,
        country: str | None = None,
        asn: int | None = None,
        identity: str | None = None,
    ) -> None:
        """Add facts to an entity's baseline so that they never alert."""
        if not any((label, country, asn is not None, identity)):
            raise BaselineError("give a LABEL, --country, --asn or --identity")
        pipe = self.r.pipeline(transaction=self.atomic)
        self._register(pipe, entity)
        if label:
            pipe.sadd(self.keys.entity_set(entity, SET_DEST), label)
        if country:
            pipe.sadd(self.keys.entity_set(entity, SET_COUNTRY), country.upper())
        if asn is not None:
            pipe.sadd(self.keys.entity_set(entity, SET_ASN), str(int(asn)))
        if identity:
            pipe.hset(self.keys.entity(entity), "identity", identity.lower())
        pipe.execute()

    def reset(self, entity: str | None = None) -> int:
        """Forget one entity's baseline (its cooldowns stay, so no alert storm follows) or,
        with no entity, everything: every entity key, the entity index and the learning window,
        so learning starts again at the next event. Returns the number of keys deleted."""
        if entity is not None:
            deleted = self.r.delete(*self.keys.entity_keys(entity))
            self.r.zrem(self.keys.entities(), entity)
            return deleted
        deleted = 0
        batch: list[str] = []
        for key in self.r.scan_iter(match=self.keys.entity_pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self.r.delete(*batch)
                batch = []
        if batch:
            deleted += self.r.delete(*batch)
        deleted += self.r.delete(self.keys.entities(), self.keys.learning())
        return deleted

    # --- export / import ---------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "learning": self.learning(),
            "entities": {},
        }
        for entity in self.entities():
            data = self.entity(entity)
            if data is None:
                continue
            data.pop("entity")
            data["volume"] = {k: v for k, v in data["volume"].items() if k in VOLUME_FIELDS}
            out["entities"][entity] = data
        return out

    def import_(self, data: Any) -> int:
        """Merge an exported baseline (sets are unioned, fields overwritten; the learning window
        is only set when this Redis has none). Returns the number of entities imported."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise BaselineError(f"not a {EXPORT_FORMAT} file")
        if data.get("version") != EXPORT_VERSION:
            raise BaselineError(f"unsupported version {data.get('version')!r}")
        entities = data.get("entities")
        if not isinstance(entities, dict):
            raise BaselineError("'entities' must be a map")
        pipe = self.r.pipeline(transaction=self.atomic)
        learning = data.get("learning") or {}
        if isinstance(learning, dict):
            for field in ("start", "end"):
                if isinstance(learning.get(field), (int, float)):
                    pipe.hsetnx(self.keys.learning(), field, repr(float(learning[field])))
        for entity, facts in entities.items():
            if not isinstance(entity, str) or not entity or not isinstance(facts, dict):
                raise BaselineError(f"bad entity entry {entity!r}")
            info = _str_map(facts.get("info"), entity)
            volume = {k: v for k, v in _str_map(facts.get("volume"), entity).items() if k in VOLUME_FIELDS}
            last = _float(info.get("last_seen"))
            pipe.zadd(self.keys.entities(), {entity: last}, gt=True)
            if info:
                pipe.hset(self.keys.entity(entity), mapping=info)
            if volume:
                pipe.hset(self.keys.volume(entity), mapping=volume)
            for what in ENTITY_SETS:
                members = facts.get(what) or []
                if not isinstance(members, list) or not all(isinstance(m, (str, int)) for m in members):
                    raise BaselineError(f"{entity}: '{what}' must be a list of strings")
                if len(members) > SET_CAP:
                    raise BaselineError(f"{entity}: more than {SET_CAP} entries in '{what}'")
                if members:
                    pipe.sadd(self.keys.entity_set(entity, what), *[str(m) for m in members])
        pipe.execute()
        return len(entities)


def _str_map(value: Any, entity: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
        raise BaselineError(f"{entity}: expected a map of strings/numbers")
    return {str(k): str(v) for k, v in value.items()}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
