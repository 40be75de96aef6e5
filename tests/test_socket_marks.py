"""Queue depths and reconnection of the pipeline's ZeroMQ links (shared/sockets.py, shared/config.py)."""

from __future__ import annotations

import zmq

from shared.config import PipelineConfig
from shared.sockets import RECONNECT_IVL_MAX_MS, RECONNECT_IVL_MS, bind_pull, connect_push


def test_replay_links_queue_less_and_live_capture_keeps_the_whole_mark():
    replay = PipelineConfig(read_path="x.pcap", hwm=200)
    live = PipelineConfig(interface="lo", hwm=200)
    # a replay blocks instead of dropping: deep queues only hold memory
    assert (replay.packets_hwm, replay.records_hwm) == (12, 50)
    # live, capture -> decoder is the burst a decoder may fall behind before capture drops
    assert (live.packets_hwm, live.records_hwm) == (200, 50)
    assert PipelineConfig(read_path="x.pcap", hwm=16).packets_hwm == 8  # never below 8 frames


def test_a_push_connected_before_its_peer_binds_retries_soon_and_delivers(short_tmp):
    """Services of a run start together: a sender may connect first. It must try again within
    10 ms (backing off to 1 s), not ZeroMQ's flat 100 ms, and lose nothing meanwhile."""
    ctx = zmq.Context()
    endpoint = f"ipc://{short_tmp}/late.ipc"
    push = connect_push(ctx, endpoint, 10)
    try:
        assert push.getsockopt(zmq.RECONNECT_IVL) == RECONNECT_IVL_MS == 10
        assert push.getsockopt(zmq.RECONNECT_IVL_MAX) == RECONNECT_IVL_MAX_MS == 1000
        push.send(b"first", zmq.NOBLOCK)  # queued while nobody is bound
        pull = bind_pull(ctx, endpoint, 10)
        assert pull.poll(5000), "the queued frame never arrived after the bind"
        assert pull.recv() == b"first"
        pull.close()
    finally:
        push.close(linger=0)
        ctx.term()
