"""Which dealer a replay uses: packed straight from a mapped pcap file, or the general path.

Both have one contract, so capture's replay loop (service.py) is one loop: ``deal(num, until)``
returns ``(num, last ts, full)`` as sharding.deal does, ``take(i)`` hands out decoder ``i``'s
frame body as ``(body, packets, last packet number)`` or None, ``skip(n)`` reads past what a
dead predecessor handed out, and ``error`` says why the file ended early.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from services.capture import pcap_deal
from services.capture.sharding import deal, make_sharder
from services.capture.sources import OfflineSource
from shared import packed


class ListDealer:
    """The general path: the source's records as tuples, dealt to lists (sharding.deal);
    the lists are packed (or sent as they are) by the sender. Any capture file, any build."""

    def __init__(self, source: OfflineSource, decoders: int, bsize: int) -> None:
        self.source = source
        self.linktype = source.linktype
        self.packets = source.records()
        self.shard = make_sharder(source.linktype, decoders)
        self.batches: list[list[tuple]] = [[] for _ in range(max(1, decoders))]
        self.bsize = bsize

    @property
    def error(self) -> str | None:
        return self.source.error

    def skip(self, count: int) -> int:
        return sum(1 for _ in itertools.islice(self.packets, count))

    def deal(self, num: int, until: int) -> tuple[int, float | None, int]:
        return deal(self.packets, self.shard, self.batches, self.bsize, self.linktype, num, until)

    def pending(self, i: int) -> int:
        return len(self.batches[i])

    def take(self, i: int) -> tuple[list[tuple], int, int] | None:
        return take_batch(self.batches, i)

    def close(self) -> None:
        self.source.close()


def take_batch(batches: list[list[tuple]], i: int) -> tuple[list[tuple], int, int] | None:
    """Batch ``i`` of packet-tuple lists as a dealer's ``take`` gives it (and an empty one in
    its place): what a replay's general path and live capture send."""
    batch = batches[i]
    if not batch:
        return None
    batches[i] = []
    return batch, len(batch), batch[-1][0]


def drain(dealer: ListDealer | pcap_deal.PcapDealer, decoders: int) -> Iterator[tuple[int, bytes, int]]:
    """Every frame of a whole replay as ``(decoder, packed body, packets)``, full batches as they
    fill and the partial ones at the end, without ticks: for benchmarks of the reader."""
    num = 0
    while True:
        num, _ts, full = dealer.deal(num, 1 << 62)
        if full >= 0:
            yield (full, *_packed(dealer.take(full)))
        if full == -2:
            break
    for i in range(decoders):
        taken = dealer.take(i)
        if taken is not None:
            yield (i, *_packed(taken))


def _packed(taken: tuple) -> tuple[bytes, int]:
    body, count, _last = taken
    return (body if type(body) is bytes else packed.packets_body(body)), count


def dealer_for(source: OfflineSource, decoders: int, bsize: int) -> ListDealer | pcap_deal.PcapDealer:
    """The packed dealer when its twin is built and the file is a mappable classic pcap, else the
    general one. (The pure packed dealer is the reference only: pure packing is slower than msgpack.)"""
    if pcap_deal.COMPILED and packed.COMPILED and source.path is not None:
        dealer = pcap_deal.open_dealer(source.path, decoders, bsize)
        if dealer is not None:
            return dealer
    return ListDealer(source, decoders, bsize)
