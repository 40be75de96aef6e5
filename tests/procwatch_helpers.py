"""Helpers for the kernel-event attribution tests: short-lived C programs, an HTTP responder,
and a live pipeline started with extra `pktscope run` flags."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import zmq

from shared.config import PipelineConfig
from shared.redis_keys import Keys
from tests.pipeline_helpers import LivePipeline, start_pktscope, wait_for

# connect to HOST PORT (v4 or v6 literal), write NBYTES, close, exit: a program that lives ms
TCP_SEND_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    struct sockaddr_storage ss; memset(&ss, 0, sizeof ss); socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss; struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) { a4->sin_family = AF_INET; a4->sin_port = htons(atoi(argv[2])); len = sizeof *a4; }
    else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) { a6->sin6_family = AF_INET6; a6->sin6_port = htons(atoi(argv[2])); len = sizeof *a6; }
    else return 2;
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) != 0) return 1;
    long n = atol(argv[3]); static char buf[65536]; memset(buf, 'x', sizeof buf);
    while (n > 0) { long k = n > (long)sizeof buf ? (long)sizeof buf : n; long w = write(fd, buf, k); if (w <= 0) return 1; n -= w; }
    shutdown(fd, SHUT_WR); char tmp[256]; while (read(fd, tmp, sizeof tmp) > 0) {}
    close(fd);
    return 0;
}
"""

# sendto HOST PORT: COUNT datagrams of SIZE bytes from one unconnected socket, exit
UDP_SEND_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 5) return 2;
    struct sockaddr_storage ss; memset(&ss, 0, sizeof ss); socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss; struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) { a4->sin_family = AF_INET; a4->sin_port = htons(atoi(argv[2])); len = sizeof *a4; }
    else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) { a6->sin6_family = AF_INET6; a6->sin6_port = htons(atoi(argv[2])); len = sizeof *a6; }
    else return 2;
    int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
    if (fd < 0) return 1;
    int size = atoi(argv[3]), count = atoi(argv[4]); static char buf[65536]; memset(buf, 'u', sizeof buf);
    for (int i = 0; i < count; i++) if (sendto(fd, buf, size, 0, (struct sockaddr *)&ss, len) != size) return 1;
    close(fd);
    return 0;
}
"""

# FORK MODE ARGS...: "exec": the child execs ARGS (another program does the networking);
# "self": the child connects to ARGS[0] ARGS[1] itself (same executable, its own pid)
FORK_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    pid_t pid = fork();
    if (pid == 0) {
        if (strcmp(argv[1], "exec") == 0) { execv(argv[2], argv + 2); _exit(127); }
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[3])); inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) _exit(1);
        if (write(fd, "hello from the child\n", 21) != 21) _exit(1);
        close(fd);
        _exit(0);
    }
    int status = 0; waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"""

SOURCES = {"tcpsend": TCP_SEND_C, "udpsend": UDP_SEND_C, "forker": FORK_C}


def build(directory: Path, name: str, extra_define: str = "") -> Path:
    """Compile one of SOURCES into ``directory/name`` (its real path, as /proc/PID/exe says)."""
    src = directory / f"{name}.c"
    src.write_text((extra_define + "\n" if extra_define else "") + SOURCES[name])
    out = directory / name
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src)], check=True)
    return out.resolve()


def copies(original: Path, directory: Path, prefix: str, n: int) -> list[Path]:
    """``n`` uniquely named copies of a program (each a new entity for the detector)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        dst = directory / f"{prefix}-{i:03d}"
        shutil.copy2(original, dst)
        out.append(dst.resolve())
    return out


class HttpResponder:
    """A TCP server on ``host`` that answers every request with a tiny HTTP response and closes
    (so curl exits at once); also counts the bytes it received."""

    def __init__(self, host: str = "127.0.0.1", family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        got = 0
        try:
            conn.settimeout(10)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
                if data.startswith(b"GET ") or b"\r\n\r\n" in data:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                self.received += got
            conn.close()

    def close(self) -> None:
        self.sock.close()


class UdpSink:
    """A UDP socket that receives and counts (so the kernel does not answer port unreachable)."""

    def __init__(self, host: str = "127.0.0.1", family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.received += len(data)

    def close(self) -> None:
        self.sock.close()


class Pipeline(LivePipeline):
    """LivePipeline with extra `pktscope run` flags (attribution mode, flow log, --config)."""

    def __init__(self, tmp: Path, bpf: str, *extra: str, interface: str = "lo") -> None:
        self.run_dir = tmp / "live"
        self.log = tmp / "pktscope.log"
        args = [
            "run",
            "--interface",
            interface,
            "--bpf",
            bpf,
            "--decoders",
            "1",
            "--run-dir",
            str(self.run_dir),
        ]
        args += ["--state-dir", str(tmp / "state"), "--learning", "0", *extra]
        self.proc = start_pktscope(*args, log=self.log)
        wait_for(lambda: (self.run_dir / "pipeline.json").exists(), 20, what="pipeline.json")
        self.cfg = PipelineConfig.load(self.run_dir / "pipeline.json")
        self.keys = Keys(self.cfg.redis_prefix)
        self.r = wait_for(self._redis, 20, what="the private redis")
        services = {"capture", "flowtracker", "detector", "decoder-0"}
        if self.cfg.procwatch_enabled:
            services.add("procwatch")
        wait_for(lambda: services <= self._reporting(), 30, what=f"services {services} to report")
        if self.cfg.procwatch_enabled:
            wait_for(lambda: self.stats("procwatch").get("ready") == "1", 30, what="procwatch to attach")
        # capture sends a tick every 0.5 s once it captures
        wait_for(lambda: int(self.stats("capture").get("frames_out", 0)) > 0, 30, what="capture to start")
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.cfg.alerts_pub_endpoint)
        time.sleep(0.3)

    def collect(self, kind: str, entities: set[str], timeout: float) -> dict[str, dict]:
        """The first alert of ``kind`` for each entity, until all are in or ``timeout``."""
        found: dict[str, dict] = {}
        deadline = time.time() + timeout
        while time.time() < deadline and not entities <= set(found):
            alert = self.next_alert(max(0.01, deadline - time.time()))
            if alert and alert["kind"] == kind and alert["entity"] in entities:
                found.setdefault(alert["entity"], alert)
        return found
