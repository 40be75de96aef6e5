"""``--index auto``: decoder replicas claim distinct indexes through Redis leases (real redis-server)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from services.decoder.__main__ import take_auto_index
from services.decoder.index_claim import IndexClaim, index_claim_key
from shared.config import PipelineConfig
from shared.redis_keys import Keys
from tests.conftest import ROOT

KEYS = Keys("pks-test")


@pytest.fixture
def claims(redis_url):
    """Make IndexClaims against the test Redis; release them all at the end."""
    made: list[IndexClaim] = []

    def make(slots: int = 2, **kw) -> IndexClaim:
        claim = IndexClaim(redis_url, KEYS, slots, **kw)
        made.append(claim)
        return claim

    yield make
    for claim in made:
        claim.close()


def test_key_follows_the_prefix_and_shares_one_hash_tag():
    assert index_claim_key(KEYS, 0) == "pks-test:claim:{decoder}:0"
    assert index_claim_key(Keys(), 7) == "pktscope:claim:{decoder}:7"


def test_two_claimers_get_0_and_1_with_a_lease(claims, rdb):
    a, b = claims(ttl=5.0, owner="a"), claims(ttl=5.0, owner="b")
    assert a.claim() == 0
    assert b.claim() == 1
    assert rdb.get(index_claim_key(KEYS, 0)) == "a"
    assert rdb.get(index_claim_key(KEYS, 1)) == "b"
    assert 0 < rdb.pttl(index_claim_key(KEYS, 1)) <= 5000


def test_third_claimer_waits_until_one_releases(claims, rdb, caplog):
    a, b, c = claims(owner="a"), claims(owner="b"), claims(owner="c")
    assert (a.claim(), b.claim()) == (0, 1)
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(c.claim(retry=0.05)))
    with caplog.at_level("WARNING", logger="pktscope.decoder.index"):
        waiter.start()
        time.sleep(0.5)
        assert got == [] and waiter.is_alive()
        b.release()
        waiter.join(timeout=5)
    assert got == [1]
    assert rdb.get(index_claim_key(KEYS, 1)) == "c"
    assert rdb.get(index_claim_key(KEYS, 0)) == "a"
    waiting = [r.getMessage() for r in caplog.records if "every decoder index" in r.getMessage()]
    assert len(waiting) == 1  # said once, not once per retry
    assert "[0, 2)" in waiting[0] and "0: a" in waiting[0] and "1: b" in waiting[0]


def test_waiting_ends_when_stopped(claims):
    a, b = claims(slots=1, owner="a"), claims(slots=1, owner="b")
    assert a.claim() == 0
    deadline = time.monotonic() + 0.3
    assert b.claim(stop=lambda: time.monotonic() > deadline, retry=0.05) is None
    assert b.index is None


def test_expired_lease_is_reclaimed_and_the_old_holder_knows_it_lost(claims, rdb):
    old = claims(slots=1, ttl=0.3, owner="old")  # claims and never renews: a killed replica
    new = claims(slots=1, ttl=5.0, owner="new")
    assert old.claim() == 0
    started = time.monotonic()
    assert new.claim(retry=0.05) == 0
    assert time.monotonic() - started >= 0.2  # it had to wait for the expiry
    assert rdb.get(index_claim_key(KEYS, 0)) == "new"
    assert old.renew_once() == 0  # lost: the old holder must stop
    old.release()  # and its release leaves the new holder's lease alone
    assert rdb.get(index_claim_key(KEYS, 0)) == "new"


def test_heartbeat_keeps_a_short_lease_alive_and_release_deletes_it(claims, rdb):
    holder = claims(slots=1, ttl=0.3, owner="holder")
    other = claims(slots=1, ttl=5.0, owner="other")
    assert holder.claim() == 0
    holder.start_heartbeat()
    time.sleep(1.0)  # three lease lengths
    assert rdb.get(index_claim_key(KEYS, 0)) == "holder"
    assert other.try_claim() is None
    holder.release()
    assert rdb.exists(index_claim_key(KEYS, 0)) == 0
    assert other.try_claim() == 0


def test_heartbeat_retakes_an_expired_free_lease_and_reports_a_stolen_one(claims, rdb):
    lost = threading.Event()
    holder = claims(slots=1, ttl=0.3, owner="holder", on_lost=lost.set)
    assert holder.claim() == 0
    key = index_claim_key(KEYS, 0)
    rdb.delete(key)  # as if it expired while nobody wanted it (or Redis restarted empty)
    assert holder.renew_once() == 2 and rdb.get(key) == "holder"
    holder.start_heartbeat()
    rdb.set(key, "thief", px=5000)
    assert lost.wait(timeout=3)
    assert holder.lost
    assert rdb.get(key) == "thief"


def test_take_auto_index_from_argv():
    assert take_auto_index(["--config", "p", "--index", "auto"]) == (["--config", "p"], True)
    assert take_auto_index(["--index=auto", "--config", "p"]) == (["--config", "p"], True)
    assert take_auto_index(["--config", "p", "--index", "1"]) == (["--config", "p", "--index", "1"], False)


# --- real decoder processes ----------------------------------------------------------------------


def start_auto_decoder(config: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.decoder", "--config", config, "--index", "auto"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_decoder_processes_claim_distinct_indexes_and_release_them(short_tmp, redis_url, rdb):
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, decoders=2, hwm=20, run_id="claim")
    config = str(cfg.save())
    keys = Keys(cfg.redis_prefix)
    procs = [start_auto_decoder(config), start_auto_decoder(config)]
    try:
        stats = [keys.stats("decoder-0"), keys.stats("decoder-1")]
        wait_for(lambda: all(rdb.hget(k, "pid") for k in stats))
        pids = {int(rdb.hget(k, "pid")) for k in stats}
        assert pids == {p.pid for p in procs}
        for i, k in enumerate(stats):
            owner = rdb.hget(k, "claim")
            assert rdb.hget(k, "index") == str(i)
            assert owner.split(":")[1] == rdb.hget(k, "pid")  # the stats name the lease holder
            assert rdb.get(index_claim_key(keys, i)) == owner
            assert 0 < rdb.pttl(index_claim_key(keys, i)) <= 10_000
        wait_for(lambda: all((short_tmp / f"decoder-{i}.ipc").exists() for i in range(2)))

        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=15) == 0
        logs = [p.stderr.read() for p in procs]
        assert sorted(int(log.split("claimed decoder index ")[1][0]) for log in logs) == [0, 1]
        assert all("released decoder index" in log for log in logs)
        assert rdb.exists(index_claim_key(keys, 0), index_claim_key(keys, 1)) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_killed_decoder_leaves_only_a_lease_that_expires(short_tmp, redis_url, rdb):
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, decoders=1, hwm=20)
    keys = Keys(cfg.redis_prefix)
    proc = start_auto_decoder(str(cfg.save()))
    try:
        wait_for(lambda: rdb.hget(keys.stats("decoder-0"), "pid") == str(proc.pid))
        proc.kill()
        proc.wait(timeout=10)
        ttl = rdb.pttl(index_claim_key(keys, 0))
        assert 0 < ttl <= 10_000  # no cleanup ran, but the claim is a lease, not a lock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_decoder_process_stops_when_another_replica_holds_its_index(short_tmp, redis_url, rdb):
    cfg = PipelineConfig(run_dir=str(short_tmp), redis_url=redis_url, decoders=1, hwm=20)
    keys = Keys(cfg.redis_prefix)
    proc = start_auto_decoder(str(cfg.save()))
    try:
        wait_for(lambda: rdb.hget(keys.stats("decoder-0"), "pid") == str(proc.pid))
        rdb.set(index_claim_key(keys, 0), "other-replica", px=30_000)  # its lease expired and was taken
        assert proc.wait(timeout=15) == 3  # the next renewal (every ttl/3) notices and stops it
        log = proc.stderr.read()
        assert "belongs to another replica (other-replica)" in log and "stopping on signal" in log
        assert rdb.get(index_claim_key(keys, 0)) == "other-replica"  # the new holder keeps it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("cluster", [False, True])
def test_an_unreachable_redis_at_start_is_waited_out_and_a_stop_ends_the_wait(short_tmp, cluster):
    """compose starts every container at once: a Redis (Cluster) not answering yet must be waited
    for, not crash the decoder with a traceback, and SIGTERM must end the wait at once."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = PipelineConfig(
        run_dir=str(short_tmp), redis_url=f"redis://127.0.0.1:{port}/0", redis_cluster=cluster, decoders=2
    )
    proc = start_auto_decoder(str(cfg.save()))
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.stderr.read()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 3
        log = proc.stderr.read()
        assert "unreachable" in log and "retrying" in log and "Traceback" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
