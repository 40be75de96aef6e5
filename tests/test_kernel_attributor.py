"""The detector's side of kernel-event attribution: facts over a real ZeroMQ PUB socket, the join,
waiting for a fact in flight, counting lost messages, the psutil fallback."""

from __future__ import annotations

import threading
import time

import msgpack
import zmq

from services.detector.enrich.attribution import ProcessAttributor
from services.detector.enrich.kernel_attribution import KernelAttributor, info_from_fact, process_facts
from tests.pipeline_helpers import wait_for

PROC = {
    "pid": 4242, "ppid": 1, "uid": 0, "user": "root", "comm": "curl", "exe": "/usr/bin/curl",
    "argv": ["curl", "https://example.com"], "cmdline": "curl https://example.com", "parent_exe": "/usr/bin/bash",
    "cgroup": "/system.slice/docker-" + "a" * 64 + ".scope", "cgroup_id": 7, "container_id": "a" * 64,
    "sha256": "f" * 64, "exe_deleted": False, "started": 1.0, "exited": 2.0, "source": "exec",
}  # fmt: skip


def fact(ts: float, lport: int, pid: int = 4242) -> dict:
    return {"kind": "connect", "proto": 6, "lip": "10.0.0.1", "lport": lport, "rip": "93.184.216.34",
            "rport": 443, "ts": ts, "tid": pid, "sock_type": 1, "proc": dict(PROC, pid=pid)}  # fmt: skip


def send(pub: zmq.Socket, seq: int, facts: list) -> None:
    pub.send_multipart([b"facts", msgpack.packb({"seq": seq, "facts": facts})])


def test_facts_in_flight_are_waited_for_and_lost_messages_counted(short_tmp, rdb, redis_url):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{short_tmp}/pw.ipc"
    pub.bind(endpoint)
    rdb.hset("pktscope:stats:procwatch", "mode", "bpf")
    att = KernelAttributor(endpoint, redis_url, "pktscope", fallback=ProcessAttributor(), ctx=ctx)
    try:
        now = time.time()
        wait_for(lambda: send(pub, 0, [fact(now, 40000)]) or att.counters.get("facts_in"), 10, what="a fact")
        info = att.lookup(6, "10.0.0.1", 40000, "93.184.216.34", 443, at=now)
        assert info is not None and (info.pid, info.exe, info.source) == (4242, "/usr/bin/curl", "bpf")
        assert info.argv == ("curl", "https://example.com") and info.container_id == "a" * 64
        assert process_facts(info)["cgroup"].endswith(".scope")
        # a fact published 50 ms after the lookup started is waited for
        answers: list = []
        asking = threading.Thread(
            target=lambda: answers.append(att.lookup(6, "10.0.0.1", 40001, "93.184.216.34", 443, at=now))
        )
        asking.start()
        time.sleep(0.05)
        send(pub, 1, [fact(now, 40001, pid=7)])  # the socket stays with this thread (ZeroMQ's rule)
        asking.join()
        assert answers[0] is not None and answers[0].pid == 7
        assert att.counters["found_after_wait"] == 1
        # messages 2..4 never arrive: counted
        send(pub, 5, [fact(now, 40002)])
        wait_for(lambda: att.counters.get("messages_lost") == 3, 10, what="the gap")
        time.sleep(0.3)
        # nothing for this flow: the psutil poll answers (no such socket here) and the miss is counted
        assert att.lookup(6, "10.0.0.1", 41234, "93.184.216.34", 443, at=now - 3600) is None
        assert att.counters["unattributed"] == 1 and att.counters["kernel_misses"] == 1
        # a quiet detector (no lookups) still takes every fact off the socket
        for seq in range(6, 400):
            send(pub, seq, [fact(now, 50000 + seq)])
        wait_for(lambda: att.counters["facts"] == 3 + 394, 20, what="every fact in the table")
        assert att.lookup(6, "10.0.0.1", 50399, "93.184.216.34", 443, at=now) is not None
        assert att.counters["messages_lost"] == 3
    finally:
        att.close()
        pub.close(linger=0)
        ctx.term()


def test_a_fact_without_an_executable_is_no_attribution():
    assert info_from_fact({"proc": dict(PROC, exe="")}) is None
    assert info_from_fact({"proc": "junk"}) is None
    assert info_from_fact({}) is None
