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
