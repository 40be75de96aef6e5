"""Load the CO-RE object through the system libbpf (libbpf.so.1, ctypes) and read its ring buffer.

Why ctypes over libbpf rather than BCC: BCC compiles at run time against kernel headers, which
these machines do not have; a CO-RE object built once by scripts/setup is relocated by libbpf
against /sys/kernel/btf/vmlinux when it loads (the way picosnitch loads its programs).

Tracepoints only: kprobes and fentry are refused on some kernels (and here). Programs whose
tracepoint does not exist are reported in ``missing`` and the rest still run, so a kernel
without, say, ``sock:sock_send_length`` still attributes TCP.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
BTF = Path("/sys/kernel/btf/vmlinux")
# Programs the service cannot do without (TCP connect ownership and exec); the others add
# UDP/ICMP/raw, fork/exit and the sendto peer, and are optional.
REQUIRED = ("on_inet_sock_set_state", "on_exec")
LOST_SLOTS = ("sock_lost", "proc_lost", "connect_table_full")

_RB_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class BpfUnavailable(RuntimeError):
    """Why the kernel-event path cannot run here (the message is shown to the user)."""


def default_object_path() -> Path:
    """Where scripts/setup leaves the compiled object (PKTSCOPE_PROCWATCH_OBJ overrides)."""
    env = os.environ.get("PKTSCOPE_PROCWATCH_OBJ")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "bpf" / "build" / "procwatch.bpf.o"


def ensure_tracefs() -> str:
    """The tracefs mount point, mounting it when missing (needs root)."""
    for path in TRACEFS:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    target = TRACEFS[0]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpfUnavailable(f"tracefs is not mounted and mounting it on {target} failed: {os.strerror(err)}")
    return target


def precheck(obj_path: Path | None = None) -> None:
    """Raise BpfUnavailable with the reason when BPF surely cannot load (cheap, no kernel calls)."""
    obj_path = obj_path or default_object_path()
    if os.geteuid() != 0:
        raise BpfUnavailable("not root (loading BPF programs needs root or CAP_BPF+CAP_PERFMON)")
    if not BTF.exists():
        raise BpfUnavailable(f"the kernel has no BTF ({BTF} is missing), so CO-RE programs cannot load")
    if not obj_path.exists():
        raise BpfUnavailable(f"{obj_path} is not built (run scripts/setup: needs clang, bpftool, libbpf-dev)")
    if _libbpf_path() is None:
        raise BpfUnavailable("libbpf.so.1 is not installed (apt-get install libbpf1)")
    lockdown = Path("/sys/kernel/security/lockdown")
    try:
        if "[confidentiality]" in lockdown.read_text():
            raise BpfUnavailable("kernel lockdown (confidentiality) forbids BPF reads of kernel memory")
    except OSError:
        pass


def _libbpf_path() -> str | None:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


def _bind(lib: ctypes.CDLL) -> None:
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sigs = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
        "bpf_program__section_name": (cp, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_link__destroy": (ci, [vp]),
        "bpf_object__find_map_fd_by_name": (ci, [vp, cp]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
        "ring_buffer__new": (vp, [ci, _RB_CALLBACK, vp, vp]),
        "ring_buffer__poll": (ci, [vp, ci]),
        "ring_buffer__free": (None, [vp]),
        "libbpf_set_print": (vp, [_PRINT_FN]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


@_PRINT_FN
def _quiet(level: int, fmt: bytes, args: int) -> int:  # libbpf's own chatter: not needed
    return 0


class BpfProgram:
    """An opened, loaded and attached procwatch object with its ring buffer.

    ``poll(timeout_ms)`` calls ``on_event(bytes)`` for every record. ``close()`` detaches.
    """

    def __init__(self, on_event: Callable[[bytes], None], obj_path: Path | None = None) -> None:
        obj_path = obj_path or default_object_path()
        precheck(obj_path)
        ensure_tracefs()
        path = _libbpf_path()
        assert path is not None
        self.lib = lib = ctypes.CDLL(path, use_errno=True)
        _bind(lib)
        lib.libbpf_set_print(_quiet)
        self.obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
        if not self.obj:
            raise BpfUnavailable(
                f"libbpf could not open {obj_path}: {os.strerror(ctypes.get_errno() or errno.EINVAL)}"
            )
        self.links: list[int] = []
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.rb = None
        self._handler = on_event
        try:
            self._skip_absent_tracepoints()
            err = lib.bpf_object__load(self.obj)
            if err:
                raise BpfUnavailable(f"the kernel refused the BPF programs: {os.strerror(-err)}")
            self._attach_all()
            self._callback = _RB_CALLBACK(self._on_record)
            fd = lib.bpf_object__find_map_fd_by_name(self.obj, b"events")
            self.lost_fd = lib.bpf_object__find_map_fd_by_name(self.obj, b"lost")
            self.rb = lib.ring_buffer__new(fd, self._callback, None, None)
            if not self.rb:
                raise BpfUnavailable("libbpf could not set up the ring buffer")
        except BaseException:
            self.close()
            raise

    def _programs(self):
        prog = self.lib.bpf_object__next_program(self.obj, None)
        while prog:
            yield prog
            prog = self.lib.bpf_object__next_program(self.obj, prog)

    def _skip_absent_tracepoints(self) -> None:
        """Programs whose tracepoint this kernel lacks are not loaded (optional ones only)."""
        tracefs = ensure_tracefs()
        for prog in self._programs():
            name = self.lib.bpf_program__name(prog).decode()
            section = self.lib.bpf_program__section_name(prog).decode()
            category, _, event = section.removeprefix("tracepoint/").partition("/")
            if not os.path.isdir(os.path.join(tracefs, "events", category, event)):
                if name in REQUIRED:
                    raise BpfUnavailable(f"this kernel has no tracepoint {category}:{event}")
                self.lib.bpf_program__set_autoload(prog, False)
                self.missing.append(name)

    def _attach_all(self) -> None:
        for prog in self._programs():
            name = self.lib.bpf_program__name(prog).decode()
            if name in self.missing:
                continue
            link = self.lib.bpf_program__attach(prog)
            if not link:
                err = ctypes.get_errno()
                if name in REQUIRED:
                    raise BpfUnavailable(f"attaching {name} failed: {os.strerror(err)}")
                self.missing.append(name)
                continue
            self.links.append(link)
            self.attached.append(name)

    def _on_record(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._handler(ctypes.string_at(data, size))
        except Exception:  # a bad record must not stop the reader
            log.exception("procwatch: handling a kernel event failed")
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Read what the ring buffer holds (waiting up to ``timeout_ms``); returns records read."""
        n = self.lib.ring_buffer__poll(self.rb, timeout_ms)
        if n < 0 and -n != errno.EINTR:
            raise OSError(-n, os.strerror(-n))
        return max(n, 0)

    def lost(self) -> dict[str, int]:
        """Events the kernel side could not hand over (ring buffer full, connect table full)."""
        out = {}
        for i, name in enumerate(LOST_SLOTS):
            key, value = ctypes.c_uint32(i), ctypes.c_uint64(0)
            if self.lib.bpf_map_lookup_elem(self.lost_fd, ctypes.byref(key), ctypes.byref(value)) == 0:
                out[name] = value.value
        return out

    def close(self) -> None:
        if self.rb:
            self.lib.ring_buffer__free(self.rb)
            self.rb = None
        for link in self.links:
            self.lib.bpf_link__destroy(link)
        self.links = []
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
