"""Cgroup path of a process (by pid while it lives, by cgroup v2 id after) and the container in it."""

from __future__ import annotations

import os
import re
import time

# A container runtime names the container's cgroup with its 64-hex id: docker-<id>.scope,
# /docker/<id>, libpod-<id>.scope (podman), cri-containerd-<id>.scope, crio-<id>.scope,
# /kubepods/.../<id>. Kubernetes pods add pod<uid>.
_CONTAINER = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
MAX_PATHS = 65536


def container_id(path: str) -> str:
    """The container id a cgroup path names (the innermost one), else the pod uid, else ""."""
    found = _CONTAINER.findall(path)
    if found:
        return found[-1]
    pod = _POD.search(path)
    return pod.group(1).replace("_", "-") if pod else ""


def cgroup2_root() -> str:
    """Mount point of the cgroup v2 hierarchy ("" when there is none)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return ""


def path_of_pid(pid: int) -> str | None:
    """The v2 ("0::") cgroup path of a live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return ""


class CgroupPaths:
    """cgroup v2 id -> path. The id of a cgroup v2 directory is its inode number, so walking
    the hierarchy maps ids to paths; the walk is redone on a miss, at most once a second."""

    def __init__(self, root: str | None = None, min_rescan: float = 1.0) -> None:
        self.root = cgroup2_root() if root is None else root
        self.min_rescan = min_rescan
        self._paths: dict[int, str] = {}
        self._scanned = -1e18

    def path(self, cgroup_id: int) -> str:
        found = self._paths.get(cgroup_id)
        if found is None and self.root and time.monotonic() - self._scanned >= self.min_rescan:
            self._scan()
            found = self._paths.get(cgroup_id)
        return found or ""

    def learn(self, cgroup_id: int, path: str) -> None:
        if cgroup_id and path:
            self._paths[cgroup_id] = path
            if len(self._paths) > MAX_PATHS:
                del self._paths[next(iter(self._paths))]

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        paths: dict[int, str] = {}
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = "/" + os.path.relpath(dirpath, self.root)
            paths[ino] = "/" if rel == "/." else rel
            if len(paths) >= MAX_PATHS:
                break
        self._paths = paths
