"""What the commands share: finding the running pipeline and its Redis."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from shared.config import PipelineConfig, default_run_dir
from shared.processes import wait_or_kill
from shared.rundir import UnsafeRunDir, check_private_dir, check_trusted_file


class CliError(Exception):
    """A user-facing error: printed as ``pktscope: <message>``, exit code 2."""


def add_common(parser: argparse.ArgumentParser) -> None:
    """--run-dir, --redis-url and --redis-prefix, taken by every command that reads Redis."""
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help=f"the pipeline's run directory (default: $PKTSCOPE_RUN_DIR or {default_run_dir()})",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis to use, e.g. redis://127.0.0.1:6379/0 or unix:///path/redis.sock "
        "(default: the private redis-server of the pipeline in --run-dir)",
    )
    parser.add_argument("--redis-prefix", default=None, help="key prefix (default: pktscope)")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help="--redis-url names a node of a Redis Cluster (default: as the pipeline in --run-dir was run)",
    )


# Where a systemd install keeps the config its units run with (`pktscope systemd`, README):
# the units' run directory holds only sockets, so the commands look here too.
INSTALLED_CONFIG = Path("/etc/pktscope/pipeline.json")


def installed_config() -> Path:
    """The installed pipeline config: $PKTSCOPE_CONFIG, else /etc/pktscope/pipeline.json."""
    return Path(os.environ.get("PKTSCOPE_CONFIG") or INSTALLED_CONFIG)


def load_pipeline(run_dir: Path | None) -> PipelineConfig | None:
    """The configuration of the pipeline in ``run_dir``, or None if none was ever run there.

    A pipeline started by `pktscope run` leaves its config in its run directory; one started by
    systemd units has it in ``installed_config()``, used when its run directory is ``run_dir``.
    """
    where = run_dir or default_run_dir()
    path = where / "pipeline.json"
    if path.exists():
        # another user's directory (made first under /tmp) could point us at their Redis
        return _load_trusted(path, private_dir=True)
    installed = installed_config()
    if not installed.is_file():
        return None
    cfg = _load_trusted(installed, private_dir=False)
    return cfg if Path(cfg.run_dir).resolve() == where.resolve() else None


def _load_trusted(path: Path, private_dir: bool) -> PipelineConfig:
    """A pipeline config we may act on (it names the Redis every command talks to)."""
    try:
        if private_dir:
            check_private_dir(path.parent, trusted=(os.geteuid(), 0), fix_mode=False)
        check_trusted_file(path)
    except UnsafeRunDir as exc:
        raise CliError(str(exc)) from None
    try:
        return PipelineConfig.load(path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def resolve_redis(args: argparse.Namespace) -> None:
    """Fill args.redis_url / args.redis_prefix from the running pipeline when not given."""
    cfg = load_pipeline(getattr(args, "run_dir", None))
    given = getattr(args, "redis_url", None)
    chosen_dir = getattr(args, "run_dir", None) is not None
    if given is not None and cfg is not None and not chosen_dir and given != cfg.effective_redis_url:
        # another pipeline's Redis (a pool, a cluster, another host) and no --run-dir: the
        # default run directory's pipeline says nothing about it (its run id would hide every
        # service of the run that Redis holds)
        cfg = None
    if getattr(args, "redis_url", None) is None:
        if cfg is None:
            where = getattr(args, "run_dir", None) or default_run_dir()
            raise CliError(
                f"no pipeline found in {where} and no --redis-url given: "
                "start one with `pktscope run`, or pass --run-dir / --redis-url"
            )
        args.redis_url = cfg.effective_redis_url
        if not cfg.redis_url and cfg.state_dir and not _answers(args.redis_url, cfg.redis_cluster):
            args.redis_url = _start_offline_redis(cfg)
    if getattr(args, "redis_prefix", None) is None:
        args.redis_prefix = cfg.redis_prefix if cfg else "pktscope"
    if not getattr(args, "redis_cluster", None):
        # the pipeline's own Redis is a cluster when it was run so, unless another URL was given
        same_redis = cfg is not None and args.redis_url == cfg.effective_redis_url
        args.redis_cluster = bool(same_redis and cfg.redis_cluster)
    args.pipeline = cfg


def _answers(url: str, cluster: bool = False) -> bool:
    import redis

    from shared.redis_conn import connect

    try:
        return bool(connect(url, cluster=cluster, socket_connect_timeout=1).ping())
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return False


def _start_offline_redis(cfg: PipelineConfig) -> str:
    """The pipeline is stopped but its private Redis data is on disk: serve it for this command.

    The temporary redis-server saves on exit, so `baseline allow` and friends persist too.
    """
    import atexit
    import contextlib
    import shutil
    import tempfile

    from shared.redis_server import RedisServerError, migrate_to_aof, start_redis_server

    tmp = Path(tempfile.mkdtemp(prefix="pktscope-redis-"))
    Path(cfg.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        migrate_to_aof(Path(cfg.state_dir))
        proc, url = start_redis_server(tmp / "redis.sock", Path(cfg.state_dir), "pktscope.rdb", aof=True)
    except RedisServerError as exc:
        raise CliError(f"{exc}; could not serve the saved data in {cfg.state_dir}") from None

    def stop() -> None:
        import redis

        from shared.redis_conn import connect

        # shutdown closes the connection under us: an error here is success
        with contextlib.suppress(redis.RedisError):
            connect(url).shutdown(save=True)
        wait_or_kill(proc, 10)
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(stop)
    return url


def local_net_list(values: list[str]) -> list[str]:
    """``--local-net`` values, checked: a ValueError says how to write a network."""
    import ipaddress

    for cidr in values:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"--local-net {cidr!r} is not a network; write it like 10.1.0.0/16") from None
    return list(values)
