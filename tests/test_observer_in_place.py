"""The observer reads FLOWS frames in place (flows_skim.live_rows) unless it writes an EVE log: the
live view it writes is the one decoded rows give."""

from __future__ import annotations

import msgpack

from scripts.bench_detector import event_frames
from services.detector.live_store import LiveStore
from services.observer.service import ObserverService, _label_of
from shared import frames
from shared.config import PipelineConfig
from shared.observe_keys import ObserveKeys
from shared.redis_conn import connect
from shared.service import StopFlag
from shared.stats import ServiceStats
from tests.conftest import BENCH_PCAP, PCAPS

CAPTURES = sorted(p for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def live_view(r, keys: ObserveKeys) -> tuple:
    meta = r.hgetall(keys.live_meta())
    return (
        r.hgetall(keys.live_conns()),
        r.zrange(keys.live_history(), 0, -1, withscores=True),
        meta.get("live"),
        meta.get("watermark"),
    )


def test_the_live_view_is_the_same_read_in_place_or_decoded(redis_url: str) -> None:
    r = connect(redis_url)
    bufs = [buf for pcap in [*CAPTURES, BENCH_PCAP] for buf in event_frames(pcap, 512)]
    views = []
    for prefix in ("inplace", "decoded"):
        keys = ObserveKeys(prefix)
        stats = ServiceStats("observer", r, keys)
        service = ObserverService(PipelineConfig(redis_prefix=prefix), StopFlag())
        live = LiveStore(r, keys, _label_of(), counters=stats.c, interval=3600.0)
        seen = []
        for i, buf in enumerate(bufs):
            if prefix == "inplace":
                service.handle([buf, msgpack.packb([]), msgpack.packb([])], live, None, stats)
            else:  # what the observer did before: every row decoded and observed
                for row in frames.decode(buf).body:
                    live.observe(row, None)
            if i % 10 == 9:  # writes along the way: open flows, then their ends
                live.flush()
                seen.append(live_view(r, keys))
        live.flush()
        seen.append(live_view(r, keys))
        views.append(seen)
    assert views[0] == views[1]
    assert any(view[0] for view in views[0])  # open flows were written along the way
    assert views[0][-1][1]  # and a history of ended outbound flows
