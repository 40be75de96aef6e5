"""A run directory nobody else can prepare for us.

The run directory holds the pipeline's sockets, its configuration (which says which Redis to
trust) and the private Redis socket. Under /tmp another local user could create it first and
own it: our pipeline would then talk through their sockets, and `pktscope alerts` would read
their Redis. So a run directory must be a real directory (not a symbolic link) owned by us with
mode 0700; one we create is made so, and one owned by someone else is refused.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path


class UnsafeRunDir(Exception):
    """The run directory is not ours alone; the message says what to do."""


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_private_dir(path: Path, trusted: tuple[int, ...] | None = None, fix_mode: bool = True) -> None:
    """Raise UnsafeRunDir unless ``path`` is a directory owned by a trusted uid, private to it.

    ``trusted`` defaults to ourselves. With ``fix_mode`` a directory of ours that others may
    read is made 0700; otherwise that is refused too.
    """
    me = os.geteuid()
    trusted = (me,) if trusted is None else trusted
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeRunDir(f"{path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeRunDir(
            f"run directory {path} is a symbolic link; pass --run-dir with a real directory of yours"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunDir(f"run directory {path} is not a directory; remove it or pass another --run-dir")
    if st.st_uid not in trusted:
        raise UnsafeRunDir(
            f"run directory {path} belongs to {_owner_name(st.st_uid)}, not to you "
            f"({_owner_name(me)}): another user may have made it to intercept your pipeline. "
            "Use another --run-dir (or set XDG_RUNTIME_DIR), or have it removed"
        )
    if st.st_mode & 0o077:
        if fix_mode and st.st_uid == me:
            os.chmod(path, 0o700)
        elif st.st_mode & 0o022:
            raise UnsafeRunDir(
                f"run directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                "chmod 700 it or use another --run-dir"
            )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or verify an existing one is ours and private; return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # made earlier by us, or by someone else first: the check below tells
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    check_private_dir(path)
    return path


def check_trusted_file(path: Path) -> None:
    """A file we read instructions from (pipeline.json): ours or root's, writable by nobody else."""
    me = os.geteuid()
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid not in (me, 0) or st.st_mode & 0o022:
        raise UnsafeRunDir(
            f"{path} belongs to {_owner_name(st.st_uid)} or is writable by others: not trusted; "
            "pass --run-dir of your own pipeline, or --redis-url"
        )
