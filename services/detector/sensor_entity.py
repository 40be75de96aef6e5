"""Entities of a detector pool carry the sensor (host) they were seen on.

With many sensors (``pktscope run --role sensor``), ``curl`` on two hosts is two entities with
their own baselines: the pool's detector writes the entity as ``<entity>@<sensor>``
(``/usr/bin/curl@web-1``, ``host:10.0.0.5@web-1``). A single-host run has no sensor, and its
entities are unchanged. Sensor names are host-name-like, so the suffix is read back unambiguously.
"""

from __future__ import annotations

import re

SENSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def valid_sensor_name(name: str) -> bool:
    return isinstance(name, str) and SENSOR_NAME.match(name) is not None


def qualify(entity: str, sensor: str) -> str:
    """The entity as seen on ``sensor`` (unchanged without one)."""
    return f"{entity}@{sensor}" if sensor else entity


def split(entity: str) -> tuple[str, str]:
    """(entity without its sensor, sensor or "")."""
    base, at, sensor = entity.rpartition("@")
    if at and base and "/" not in sensor and SENSOR_NAME.match(sensor):
        return base, sensor
    return entity, ""
