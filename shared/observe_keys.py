"""Redis keys of the observation parts: the live view, the inspector's acks, the notifier
(documented in docs/redis.md). Kept apart from shared/redis_keys.py so that they never collide
with the baseline's or with other stores (everything here is under ``P:live:``, ``P:inspect:``
or ``P:notify:``).
"""

from __future__ import annotations

from shared.redis_keys import Keys


class ObserveKeys(Keys):
    # --- live view (written by the detector, services/detector/live_store.py) ------------------
    def live_conns(self) -> str:
        """Hash: connection key -> JSON of one flow that has not ended (bounded)."""
        return f"{self.prefix}:live:conns"

    def live_history(self) -> str:
        """Sorted set: JSON of an ended flow, scored by its last packet time (bounded)."""
        return f"{self.prefix}:live:history"

    def live_meta(self) -> str:
        """Hash: when the live view was last written, its sizes and bounds."""
        return f"{self.prefix}:live:meta"

    # --- inspector ---------------------------------------------------------------------------------
    def acked(self) -> str:
        """Sorted set: alert id -> wall time it was acknowledged in `pktscope inspect` (bounded)."""
        return f"{self.prefix}:inspect:acked"

    # --- notifier ------------------------------------------------------------------------------------
    def notify_group(self, index: int) -> str:
        """Consumer-group name on the alert stream for one --notify URL."""
        return f"{self.prefix}:notify:{index}"

    def notify_sent(self, index: int) -> str:
        """Sorted set: alert ids already delivered to one URL (dedupe across restarts; bounded)."""
        return f"{self.prefix}:notify:{index}:sent"
