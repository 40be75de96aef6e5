"""Live on `lo`: a program whose binary changes on disk raises `identity_change` (issue 4, point 2).

A small C client is compiled into a temp dir, so the test owns an executable it may modify:
appending bytes to an ELF file changes its SHA-256 and leaves it runnable. The pipeline runs
with ``--learning 0``: the first connection raises ``new_process_egress`` (proving attribution
by path) and records the binary's hash as the entity's baseline identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import LivePipeline, Server, pktscope, wait_for

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root (CI runs as root)"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the client binary"),
]

ALERT_TIMEOUT = 15.0  # seconds; generous for a loaded 2-core machine (normally well under 2 s)
HOLD_MS = 10_000  # the client's longest wait; the test releases it as soon as it has been seen

# Connects to 127.0.0.1:PORT, sends a line, then waits until the server closes or HOLD_MS passes:
# the socket stays open until the detector has attributed it.
CLIENT_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) return 1;
    if (write(fd, "hello\n", 6) != 6) return 1;
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, atoi(argv[2]));
    close(fd);
    return 0;
}
"""


def build_client(directory: Path) -> Path:
    """Compile the client; its real path is what /proc/PID/exe (and so the entity) will say."""
    src = directory / "client.c"
    src.write_text(CLIENT_C)
    exe = directory / "egress-client"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
    return Path(os.path.realpath(exe))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_client(exe: Path, server: Server) -> subprocess.Popen:
    return subprocess.Popen([str(exe), str(server.port), str(HOLD_MS)])


def release(child: subprocess.Popen, server: Server, accepted: int) -> None:
    """Close the server side so the client exits now (its binary can then be written to)."""
    wait_for(lambda: len(server.conns) >= accepted, 10, what=f"{accepted} accepted connections")
    for conn in list(server.conns):
        conn.close()
    assert child.wait(timeout=HOLD_MS / 1000 + 5) == 0


def wait_alert(pipe: LivePipeline, kind: str, entity: str, timeout: float = ALERT_TIMEOUT) -> dict:
    """The next alert of ``kind`` for ``entity`` on the PUB socket (others are skipped)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alert = pipe.next_alert(max(0.01, deadline - time.time()))
        if alert and alert["kind"] == kind and alert["entity"] == entity:
            return alert
    raise AssertionError(
        f"no {kind} alert for {entity} within {timeout} s; detector stats {pipe.stats('detector')}; "
        f"log:\n{pipe.log.read_text()[-3000:]}"
    )


def drain(pipe: LivePipeline, seconds: float) -> list[dict]:
    """Every alert published within ``seconds``."""
    found, deadline = [], time.time() + seconds
    while time.time() < deadline:
        alert = pipe.next_alert(max(0.01, deadline - time.time()))
        if alert:
            found.append(alert)
    return found


def baseline_info(pipe: LivePipeline, entity: str) -> dict:
    out = pktscope("baseline", "show", entity, "--json", "--run-dir", str(pipe.run_dir), timeout=60)
    [data] = json.loads(out.stdout)["entities"]
    return data["info"]


def listed_alerts(pipe: LivePipeline, kind: str) -> list[dict]:
    out = pktscope("alerts", "list", "--json", "--kind", kind, "--run-dir", str(pipe.run_dir), timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def suppressed(pipe: LivePipeline) -> int:
    return int(pipe.stats("detector").get("alerts_suppressed", 0))


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_modified_binary_raises_identity_change_once(short_tmp, server):
    exe = build_client(short_tmp)
    entity = str(exe)
    pipe = LivePipeline(short_tmp, f"tcp port {server.port}")
    try:
        # 1. first run: attributed by path, its hash becomes the baseline identity
        old_sha = sha256_of(exe)
        child = run_client(exe, server)
        first = wait_alert(pipe, "new_process_egress", entity)
        release(child, server, 1)
        assert first["detail"]["exe"] == entity
        assert first["detail"]["pid"] == child.pid
        wait_for(
            lambda: baseline_info(pipe, entity).get("identity") == old_sha, 10, what="the baseline identity"
        )

        # 2. same path, new content (same inode; size, mtime and ctime change): identity_change
        with open(exe, "ab") as f:
            f.write(b"\0pktscope-identity-test\0")
        new_sha = sha256_of(exe)
        assert new_sha != old_sha
        child = run_client(exe, server)
        changed = wait_alert(pipe, "identity_change", entity)
        release(child, server, 2)
        assert changed["severity"] == "critical"
        assert changed["detail"]["old_identity"] == old_sha
        assert changed["detail"]["new_identity"] == new_sha
        assert changed["detail"]["pid"] == child.pid
        assert changed["detail"]["exe"] == entity
        assert old_sha[:12] in changed["title"] and new_sha[:12] in changed["title"]
        streamed = [a for a in listed_alerts(pipe, "identity_change") if a["entity"] == entity]
        assert [a["id"] for a in streamed] == [changed["id"]]
        assert streamed[0]["detail"]["old_identity"] == old_sha
        assert streamed[0]["detail"]["new_identity"] == new_sha
        info = baseline_info(pipe, entity)
        assert info["identity"] == old_sha  # the baseline is not silently replaced after learning
        assert info["identity_seen"] == new_sha

        # 3. the same modified binary again: checked (the cooldown suppresses it), no second alert
        before = suppressed(pipe)
        child = run_client(exe, server)
        wait_for(lambda: suppressed(pipe) > before, ALERT_TIMEOUT, what="the repeat to be suppressed")
        release(child, server, 3)
        later = drain(pipe, 1.0)
        assert not [a for a in later if a["kind"] == "identity_change"], later
        streamed = [a for a in listed_alerts(pipe, "identity_change") if a["entity"] == entity]
        assert len(streamed) == 1
    finally:
        assert pipe.stop() == 0
