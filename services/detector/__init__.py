"""The detector: turns flow events into alerts against a per-entity baseline kept in Redis.

Run as ``python -m services.detector --config PATH``. The engine (``engine.DetectorEngine``)
is usable in-process too; the alert schema is documented in ``alerts.py`` and docs/redis.md.
"""
