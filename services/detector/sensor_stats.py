"""Sensors' stats kept by the detector pool, for `pktscope status` (docs/redis.md).

A sensor's flow-tracker 0 sends its instances' stats hashes in STATS frames
(services/flowtracker/stats_relay.py). The pool stores each under
``<prefix>:sensor:<sensor>:stats:<service>`` (replaced whole, expiring after a day without
news) and the sensor in the sorted set ``<prefix>:sensors`` scored by when it was last heard.
The frame comes from an authenticated sensor but is still bounded and checked.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis

from services.detector.sensor_entity import valid_sensor_name

SENSOR_STATS_TTL = 86400  # seconds a silent sensor's last figures are kept
MAX_SERVICES = 256
MAX_FIELDS = 512
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def sensors_key(prefix: str) -> str:
    """Sorted set: sensor name -> wall time its stats last arrived."""
    return f"{prefix}:sensors"


def stats_key(prefix: str, sensor: str, service: str) -> str:
    """Hash: one sensor instance's stats, as the sensor wrote them, plus ``relayed_at``."""
    return f"{prefix}:sensor:{sensor}:stats:{service}"


def save(r: redis.Redis, prefix: str, sensor: str, body: Any) -> int:
    """Store a STATS frame's body; returns the services stored (0: nothing usable)."""
    if not valid_sensor_name(sensor) or not isinstance(body, dict):
        return 0
    now = time.time()
    pipe = r.pipeline(transaction=False)
    stored = 0
    for service, fields in list(body.items())[:MAX_SERVICES]:
        if not isinstance(service, str) or not _SERVICE.match(service) or not isinstance(fields, dict):
            continue
        clean = {
            str(k)[:64]: v if isinstance(v, (int, float)) else str(v)[:256]
            for k, v in list(fields.items())[:MAX_FIELDS]
            if isinstance(v, (str, int, float))
        }
        clean["relayed_at"] = now
        key = stats_key(prefix, sensor, service)
        pipe.delete(key)
        pipe.hset(key, mapping=clean)
        pipe.expire(key, SENSOR_STATS_TTL)
        stored += 1
    if stored:
        pipe.zadd(sensors_key(prefix), {sensor: now})
        pipe.execute()
    return stored


def read_all(r: redis.Redis, prefix: str) -> dict[str, dict[str, dict[str, str]]]:
    """{sensor: {service: stats}} of every sensor the pool has heard from (and still keeps)."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for sensor in r.zrange(sensors_key(prefix), 0, -1):
        sensor = sensor.decode() if isinstance(sensor, bytes) else sensor
        services: dict[str, dict[str, str]] = {}
        for key in r.scan_iter(match=_glob(stats_key(prefix, sensor, "*")), count=200):
            key = key.decode() if isinstance(key, bytes) else key
            h = r.hgetall(key)
            if h:
                services[key.rsplit(":", 1)[1]] = {_t(k): _t(v) for k, v in h.items()}
        if services:
            out[sensor] = services
    return out


def _glob(pattern: str) -> str:
    """Escape glob characters except the final ``*``."""
    head = pattern[:-1]
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in head) + "*"


def _t(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
