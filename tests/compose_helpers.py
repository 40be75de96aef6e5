"""Running compose/*.yml for real with podman and podman-compose, without a container registry
(tests/test_compose_run.py).

The images the compose files name (python:3.11-slim-bookworm as the Dockerfile's base, redis:7)
come from a registry this machine cannot reach, so the tests build stand-ins locally:

- a Debian bookworm base from debootstrap (python3, pip, headers; the host's extra CA
  certificates, so pip works behind an intercepting proxy), imported with ``podman import``;
- redis from Debian's redis-server on that base (tests/data/compose/redis.Containerfile);
- pktscope from compose/Dockerfile itself, with ``--build-arg BASE=<the local base>``.

They are kept in podman's store between sessions: the base and redis images carry a label with
the hash of their recipe and are rebuilt only when it changes; the pktscope image is rebuilt every
session through podman's layer cache (seconds when only the sources changed). The compose files
take the images through ``${PKTSCOPE_IMAGE}`` and ``${PKTSCOPE_REDIS_IMAGE}``.

podman on this machine needs a containers.conf of its own (``CONTAINERS_CONF``, written per
session, the host's config is left alone): no CAP_SYS_RESOURCE, so the containers' rlimits must
not exceed what podman itself runs with, and crun refuses the hybrid cgroup v1/v2 layout, so runc
is the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

SUITE = "bookworm"
MIRROR = os.environ.get("PKTSCOPE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-pip", "python3-dev", "python-is-python3", "ca-certificates")
BASE_IMAGE = "localhost/pktscope-test-base:bookworm"
REDIS_IMAGE = "localhost/pktscope-test-redis:7"
PKTSCOPE_IMAGE = "localhost/pktscope-test:latest"
REDIS_CONTAINERFILE = ROOT / "tests" / "data" / "compose" / "redis.Containerfile"
LABEL = "pktscope.recipe"
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
# podman 4.3 lowers its own RLIMIT_NPROC to this before starting a container; asking for more fails
PODMAN_NPROC = 32768


def compose_binary() -> str:
    """podman-compose from the venv (a test extra): Debian's 1.0.3 knows no profiles."""
    here = Path(sys.executable).parent / "podman-compose"
    return str(here) if here.exists() else (shutil.which("podman-compose") or "")


def cannot_run() -> str:
    """Why compose cannot run here ("" when it can): what is missing."""
    if os.geteuid() != 0:
        return "needs root (podman's root store, host network capture)"
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs it)"
    if not compose_binary():
        return "podman-compose is not installed (pip install -e .[test])"
    return ""


def containers_conf(directory: Path) -> Path:
    """A containers.conf podman can start containers with on this machine (see the module doc)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else min(nofile, 1048576)
    nproc = PODMAN_NPROC if nproc == resource.RLIM_INFINITY else min(nproc, PODMAN_NPROC)
    path = directory / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    return path


@dataclass
class Podman:
    """podman with the session's containers.conf."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def label(self, image: str) -> str:
        """The recipe label of ``image``; "" when the image is not in the store."""
        done = self.run("image", "inspect", "--format", "{{index .Labels \"" + LABEL + "\"}}", image, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def image_id(self, image: str) -> str:
        done = self.run("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def drop_if_replaced(self, old_id: str, image: str) -> None:
        """A rebuild leaves the previous image untagged: remove it (only ours, never a prune)."""
        if old_id and old_id != self.image_id(image):
            self.run("rmi", old_id, check=False)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _extra_cas() -> list[Path]:
    return sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []


def ensure_base(podman: Podman, scratch: Path) -> dict[str, float]:
    """The debootstrap base image (built only when its recipe changed); returns the timings."""
    recipe = _digest(SUITE, MIRROR, *BASE_PACKAGES, *(p.read_bytes() for p in _extra_cas()))
    if podman.label(BASE_IMAGE) == recipe:
        return {}
    old = podman.image_id(BASE_IMAGE)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=scratch))
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), MIRROR],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        t1 = time.monotonic()
        if _extra_cas():
            for ca in _extra_cas():
                shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
            subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman.run(
            "import", "--quiet",
            "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",  # pip's own CA list lacks the extras
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", f"LABEL {LABEL}={recipe}",
            "--change", 'CMD ["/bin/bash"]',
            "-", BASE_IMAGE, stdin=tar.stdout,
        )  # fmt: skip
        assert tar.wait() == 0
        podman.drop_if_replaced(old, BASE_IMAGE)
        return {"debootstrap": t1 - t0, "import": time.monotonic() - t1}
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_redis(podman: Podman) -> dict[str, float]:
    """The redis stand-in on the base (built only when the Containerfile or the base changed)."""
    recipe = _digest(REDIS_CONTAINERFILE.read_bytes(), podman.image_id(BASE_IMAGE))
    if podman.label(REDIS_IMAGE) == recipe:
        return {}
    old = podman.image_id(REDIS_IMAGE)
    t0 = time.monotonic()
    podman.run(
        "build", "--quiet", "-f", str(REDIS_CONTAINERFILE), "--build-arg", f"BASE={BASE_IMAGE}",
        "--label", f"{LABEL}={recipe}", "-t", REDIS_IMAGE, str(REDIS_CONTAINERFILE.parent),
    )  # fmt: skip
    podman.drop_if_replaced(old, REDIS_IMAGE)
    return {"redis image": time.monotonic() - t0}


def ensure_pktscope(podman: Podman) -> dict[str, float]:
    """compose/Dockerfile on the local base; podman's layer cache makes an unchanged build quick."""
    old = podman.image_id(PKTSCOPE_IMAGE)
    t0 = time.monotonic()
    podman.run(
        "build", "--quiet", "-f", str(ROOT / "compose" / "Dockerfile"), "--build-arg", f"BASE={BASE_IMAGE}",
        "-t", PKTSCOPE_IMAGE, str(ROOT),
    )  # fmt: skip
    podman.drop_if_replaced(old, PKTSCOPE_IMAGE)
    return {"pktscope image": time.monotonic() - t0}


@dataclass
class Container:
    name: str
    service: str
    running: bool
    exit_code: int
    restarts: int
    status: str


class Compose:
    """One compose project (``-p``) of one compose file (plus overrides), run by podman-compose."""

    def __init__(
        self, podman: Podman, project: str, files: Iterable[Path], env: Mapping[str, str] = (), profile: str = ""
    ) -> None:
        self.podman = podman
        self.project = project
        self.files = list(files)
        self.profile = profile  # given to every command: `down` without it leaves the profile's containers
        self.env = {**podman.env, "PKTSCOPE_IMAGE": PKTSCOPE_IMAGE, "PKTSCOPE_REDIS_IMAGE": REDIS_IMAGE, **dict(env)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [compose_binary(), "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        if self.profile:
            argv += ["--profile", self.profile]
        done = subprocess.run(
            [*argv, *args], env=self.env, cwd=self.files[0].parent, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def containers(self) -> dict[str, Container]:
        """Every container of the project, by name, with its state."""
        done = self.podman.run(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}", "--format", "{{.Names}}"
        )
        names = done.stdout.split()
        if not names:
            return {}
        out: dict[str, Container] = {}
        for c in json.loads(self.podman.run("inspect", *names).stdout):
            state = c["State"]
            out[c["Name"]] = Container(
                name=c["Name"],
                service=c["Config"]["Labels"].get("com.docker.compose.service", ""),
                running=bool(state["Running"]),
                exit_code=int(state["ExitCode"]),
                restarts=int(c.get("RestartCount", 0)),
                status=state["Status"],
            )
        return out

    def exec(self, container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.podman.run("exec", container, *argv, check=check, timeout=60)

    def logs(self) -> str:
        """The last lines of every container's log, for an assertion's message."""
        parts = []
        for name in self.containers():
            done = self.podman.run("logs", "--tail", "15", name, check=False)
            parts.append(f"--- {name}\n{done.stdout}{done.stderr}")
        return "\n".join(parts)

    def down(self) -> None:
        """Remove the project's containers, its volumes and its network; check nothing is left."""
        self("down", "-v", "-t", "5", check=False)
        left = self.containers()
        assert not left, f"containers left after down: {sorted(left)}"
        networks = self.podman.run("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [n for n in networks if n.startswith(f"{self.project}_")], networks
        volumes = self.podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [v for v in volumes if v.startswith(f"{self.project}_")], volumes
