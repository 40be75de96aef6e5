"""shared.redis_conn.connect_until_ready: every service's wait for Redis before its loop."""

from __future__ import annotations

import threading
import time

from shared.redis_conn import CONNECT_RETRY_MAX, connect_until_ready
from tests.conftest import start_redis


class Flag:
    """What connect_until_ready reads of a service's StopFlag (which would take this process's signals)."""

    def __init__(self) -> None:
        self.on = False

    def set(self) -> None:
        self.on = True

    def __bool__(self) -> bool:
        return self.on


def test_a_redis_that_comes_up_late_is_found_soon_after(short_tmp):
    """Redis starts 6.5 s after the service: the service answers within the capped retry delay
    (not the 5 s cap it once had, which let `pktscope status` miss a service that was up)."""
    url = f"unix://{short_tmp}/redis.sock"
    started: dict = {}

    def start_later() -> None:
        time.sleep(6.5)  # past the tries at 0.1..3.1 s, where a 5 s cap would wait until 11.3 s
        started["proc"], _ = start_redis(short_tmp)
        started["at"] = time.monotonic()

    t = threading.Thread(target=start_later)
    t.start()
    try:
        r = connect_until_ready(url, Flag(), who="test")
        answered = time.monotonic()
        t.join()
        assert r is not None and r.ping()
        assert answered - started["at"] <= 2.5, answered - started["at"]
        r.close()
    finally:
        t.join()
        if "proc" in started:
            started["proc"].terminate()
            started["proc"].wait(timeout=10)


def test_a_stopped_service_gives_up_waiting(short_tmp):
    stop = Flag()
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    assert connect_until_ready(f"unix://{short_tmp}/absent.sock", stop) is None
    assert time.monotonic() - began < CONNECT_RETRY_MAX + 1.0


def test_a_cluster_client_not_makeable_yet_is_made_again_until_stopped(caplog):
    """A Cluster client asks a node for the slot map as it is made: a name not resolvable (as in
    compose, containers started before their network's DNS knows the nodes) raised, and the
    decoder or flow-tracker that wanted it only for its stats died at start. connect_made makes it
    again until it can, or until the service is stopped."""
    import logging

    from shared.redis_conn import connect_made

    stop = Flag()
    threading.Timer(1.5, stop.set).start()
    with caplog.at_level(logging.DEBUG, logger="shared.redis_conn"):
        assert connect_made("redis://no-such-node.invalid:6379/0", stop, cluster=True, who="test") is None
    tries = [r for r in caplog.records if "not reachable" in r.getMessage()]
    assert len(tries) >= 3, [r.getMessage() for r in tries]


def test_a_plain_client_is_made_at_once_and_answers_when_redis_does(short_tmp):
    from shared.redis_conn import connect_made

    url = f"unix://{short_tmp}/redis.sock"
    r = connect_made(url, Flag())  # nothing listens yet: a plain client is made without asking
    assert r is not None
    proc, _ = start_redis(short_tmp)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert r.ping()
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        r.close()
        proc.terminate()
        proc.wait(timeout=10)
