"""A real systemd as PID 1 of its own PID, mount, UTS and IPC namespaces, for starting and stopping
the units `pktscope systemd` writes (tests/test_systemd_boot.py).

systemd is not PID 1 on this machine, but it runs as the first process of a new PID namespace.
What it could change at boot stays inside: /run, /var/tmp, /var/log and the cgroup tree are
private tmpfs/cgroup2 mounts of the namespace, and ``SYSTEMD_UNIT_PATH`` holds only the units under
test and empty stand-ins for the targets systemd expects, so no other unit of the machine is
started -- above all not systemd-tmpfiles-setup, which empties /tmp at boot (booted with the
machine's own unit path once, it did, and took a running test suite's files with it). /tmp stays
shared: the units, their config and state live in the test's tmp_path. The network namespace is shared:
capture on ``lo`` sees the test's traffic, and two booted "hosts" reach each other on 127.0.0.1.
Killing PID 1 of the namespace ends everything in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from shared.processes import wait_or_kill
from tests.pipeline_helpers import wait_for

SYSTEMD = "/lib/systemd/systemd"
# the targets systemd and ordinary service units refer to (DefaultDependencies): empty here
STUB_TARGETS = [
    *("default", "sysinit", "basic", "shutdown", "multi-user", "network", "network-online", "sockets"),
    *("local-fs", "local-fs-pre", "remote-fs", "paths", "timers", "slices", "umount", "final", "exit"),
    *("poweroff", "halt", "reboot", "rescue", "emergency"),
]
BOOT = (
    "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/tmp && "
    "mount -t tmpfs tmpfs /var/log && mount -t tmpfs tmpfs /sys/fs/cgroup && "
    "mount -t cgroup2 none /sys/fs/cgroup && "
    "export container=pktscope-test SYSTEMD_UNIT_PATH={units} && "
    "exec {systemd} --system --log-target=console --log-level=notice --show-status=no"
)


def can_boot() -> str:
    """Why a namespaced systemd cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed"
    return ""


class BootedSystemd:
    """systemd booted over the units in ``units`` (a directory outside /run, /var/tmp and /var/log)."""

    def __init__(self, units: Path, log: Path) -> None:
        for name in STUB_TARGETS:
            stub = units / f"{name}.target"
            if not stub.exists():
                stub.write_text(f"[Unit]\nDescription={name} (stand-in for the test)\n")
        self.log = log
        self.proc = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--mount-proc",
             "--propagation", "private", "sh", "-c", BOOT.format(units=units, systemd=SYSTEMD)],  # fmt: skip
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self._pid1()
        self.wait(lambda: self.systemctl("is-system-running").stdout.strip() in ("running", "degraded"), 30, "boot")

    def _pid1(self) -> int:
        """The host pid of the namespace's PID 1 (unshare's child, once it exec'd systemd)."""
        deadline = time.monotonic() + 20
        parent = psutil.Process(self.proc.pid)
        while time.monotonic() < deadline:
            for child in parent.children():
                try:
                    if child.exe().endswith("/systemd"):
                        return child.pid
                except psutil.Error:
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd did not boot: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"systemd did not start in 20 s: {self.log.read_text()[-2000:]}")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command inside the namespaces (its /run, its systemd)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def systemctl(self, *argv: str) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *argv)

    def units(self, pattern: str = "pktscope*") -> dict[str, str]:
        """Loaded units matching ``pattern``: name -> ACTIVE state."""
        out = self.systemctl("list-units", pattern, "--all", "--plain", "--no-legend").stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "loaded":
                states[parts[0]] = parts[2]
        return states

    @staticmethod
    def wait(predicate, timeout: float, what: str):
        return wait_for(predicate, timeout, interval=0.1, what=what)

    def close(self) -> None:
        """Kill PID 1 of the namespace: the kernel ends every process in it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        wait_or_kill(self.proc, 20)
