"""`pktscope run`: configure and supervise the whole pipeline, on a file or a live interface."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from services.capture.sources import CaptureError, OfflineSource, check_bpf
from services.cli import observe_flags, observe_programs, roles
from services.cli.common import CliError, local_net_list
from services.cli.runlock import RunDirBusy, RunLock
from services.cli.supervisor import Supervisor, render_config, running_pid
from services.launcher.start import LAUNCHERS, ZygoteProcess, service_modules
from shared.config import PipelineConfig, default_decoders, default_run_dir
from shared.curve import has_server_keys, is_local_endpoint
from shared.end_wake import EndWake
from shared.redis_keys import Keys
from shared.rundir import UnsafeRunDir, ensure_private_dir

if TYPE_CHECKING:
    import redis

# redis-py (0.11-0.15 s), and what uses it, are imported where needed: a replay starts supervisord
# first, and imports them with the services' modules while it starts (issue 14)

PIPELINE_SERVICES = ("capture", "decoder", "flowtracker", "detector")  # stop order: upstream first
EXIT_INCOMPLETE = 3  # a replay finished but lost something on the way (see the summary's "lost")
MAX_RESTARTS = 5  # a service restarted more often than this in one run is crash-looping
PROCESS_CHECK_EVERY = 0.25  # seconds between looks at supervisord's process table during a run
# A replay's end wakes the wait at once (shared/end_wake.py); between wakes, this often a look at
# Redis all the same (a lost wake costs at most this much; the progress bar redraws this often)
WAKE_FALLBACK = 0.1


def default_state_dir() -> Path:
    env = os.environ.get("PKTSCOPE_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pktscope")
    return Path.home() / ".local" / "state" / "pktscope"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the pipeline on a capture file or a live interface",
        description="Run capture -> decoders -> flow-tracker -> detector under supervisord. "
        "With --read the replay stops by itself and prints a summary; with --interface it runs until Ctrl-C.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every pipeline flag of `pktscope run`; `pktscope systemd` takes the same ones (one config)."""
    src = p.add_mutually_exclusive_group()  # required but by --role pool (services/cli/roles.py)
    src.add_argument("--read", "-r", metavar="CAPTURE", help="pcap or pcapng file to replay")
    src.add_argument("--interface", "-i", metavar="IFACE", help="live interface to capture on (needs root)")
    p.add_argument("--bpf", default="", help="BPF capture filter for live capture, e.g. 'tcp or udp'")
    p.add_argument("--snaplen", type=int, default=65535, help="bytes kept per live packet (default 65535)")
    p.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    p.add_argument(
        "--decoders",
        type=int,
        default=None,
        help=f"decoder processes (default: cores - 1 = {default_decoders()})",
    )
    p.add_argument(
        "--captures",
        type=int,
        default=None,
        help="live: capture processes on the interface (default 1), each given a flow-consistent "
        "share of its packets by AF_PACKET fanout; a replay (--read) is read by one",
    )
    p.add_argument(
        "--flowtrackers",
        type=int,
        default=None,
        help="flow-tracker shards (default 1); a flow's records all go to one, by flow hash",
    )
    p.add_argument(
        "--detectors",
        type=int,
        default=None,
        help="detector shards (default 1); a flow's events go to one, by its local address",
    )
    p.add_argument(
        "--run-dir", type=Path, default=None, help=f"sockets, config and logs (default {default_run_dir()})"
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help=f"private Redis data (default {default_state_dir()})"
    )
    p.add_argument(
        "--redis-url",
        default="",
        help="use this Redis instead of starting a private redis-server: redis://[:PASSWORD@]HOST:PORT/DB, "
        "rediss://... for TLS (?ssl_ca_certs=CA.pem), unix:///PATH",
    )
    p.add_argument("--redis-prefix", default="pktscope", help="prefix of every Redis key (default pktscope)")
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="--redis-url names a node of a Redis Cluster (3 masters or more, with replicas)",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON file of pipeline settings (see docs)")
    p.add_argument("--learning", type=float, default=None, help="learning window in seconds (default 7 days)")
    p.add_argument("--demo", action="store_true", help="a 5-second learning window, for trying it out")
    p.add_argument(
        "--cooldown", type=float, default=None, help="seconds between repeats of one alert (default 3600)"
    )
    p.add_argument(
        "--local-net",
        action="append",
        default=None,
        metavar="CIDR",
        help="a local network (repeatable; default RFC 1918, ULA, loopback, link-local)",
    )
    p.add_argument("--geoip-country-db", default=None, help="GeoLite2/GeoIP2 Country or City .mmdb file")
    p.add_argument("--geoip-asn-db", default=None, help="GeoLite2 ASN .mmdb file")
    p.add_argument(
        "--volume-interval", type=float, default=None, help="seconds per volume interval (default 60)"
    )
    p.add_argument("--ewma-alpha", type=float, default=None, help="EWMA smoothing factor (default 0.3)")
    p.add_argument(
        "--z-threshold", type=float, default=None, help="volume spike threshold in std devs (default 4)"
    )
    p.add_argument("--volume-floor", type=int, default=None, help="smallest spike in bytes (default 5 MiB)")
    p.add_argument(
        "--min-intervals", type=int, default=None, help="intervals before spikes count (default 8)"
    )
    p.add_argument("--flow-log", default=None, help="append one JSON line per ended flow to this file")
    p.add_argument("--max-flows", type=int, default=None, help="flow table cap (default 500000)")
    p.add_argument(
        "--keep-packets",
        type=int,
        default=None,
        metavar="N",
        help="keep each flow's last N packets in the decoders, so `alerts pcap ID -w FILE` can save an alert's flow",
    )
    p.add_argument(
        "--alerts-endpoint",
        default=None,
        help="ZeroMQ endpoint of the alert PUB socket "
        "(default ipc://RUN_DIR/alerts.ipc; use tcp://127.0.0.1:PORT for TCP)",
    )
    p.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="CURVE keys (`pktscope keys`) for an --alerts-endpoint beyond loopback "
        f"(default {default_state_dir() / 'curve'} when it holds keys)",
    )
    p.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow an --alerts-endpoint beyond loopback without CURVE: anyone who can connect reads alerts",
    )
    p.add_argument("--batch-size", type=int, default=None, help="packets per frame (default 512)")
    p.add_argument(
        "--attribution",
        choices=("auto", "bpf", "psutil"),
        default=None,
        help="live: how flows are tied to programs: kernel events (eBPF, short-lived programs too) "
        "with psutil for what they miss (auto, the default), kernel events or fail (bpf), "
        "or socket-table polling only (psutil)",
    )
    observe_flags.add_arguments(p)
    roles.add_arguments(p)
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="how services start: fork them from one process that imported them once (fast), "
        "or exec an interpreter for each (default: the config's, else fork)",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument(
        "--timeout", type=float, default=0, help="offline: give up after this many seconds (0: never)"
    )


def _positive(name: str, value: float | int | None, minimum: float = 0) -> None:
    if value is not None and value < minimum:
        raise CliError(f"{name} must be >= {minimum}, got {value}")


MAX_CAPTURES = 64


def _captures(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    """--captures (or the config's ``captures``): 1..64, and more than one only for live capture."""
    flag = "--captures" if args.captures is not None else "config field captures"
    if args.captures is not None:
        cfg.captures = args.captures
    if not isinstance(cfg.captures, int) or not 1 <= cfg.captures <= MAX_CAPTURES:
        raise CliError(
            f"{flag} {cfg.captures!r}: give a whole number from 1 to {MAX_CAPTURES} "
            "(capture processes on the interface, at most one per core; e.g. --captures 2)"
        )
    if cfg.captures > 1 and cfg.read_path:
        raise CliError(
            f"{flag} {cfg.captures} splits live capture (--interface); a replay is read by one "
            "process, which keeps up (docs/benchmarks.md): drop --captures or pass --captures 1"
        )


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Flags over the --config file over the defaults; every problem is a CliError that says how to fix it."""
    base: dict = {}
    if args.config is not None:
        try:
            base = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read --config {args.config}: {exc}") from None
    try:
        cfg = PipelineConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--config {args.config}: {exc}") from None
    run_dir = args.run_dir or default_run_dir()
    cfg.run_dir = str(run_dir.resolve())
    cfg.state_dir = str((args.state_dir or default_state_dir()).resolve())
    cfg.run_id = uuid.uuid4().hex[:12]
    if args.read:
        cfg.read_path, cfg.interface = str(Path(args.read).resolve()), ""
    else:
        cfg.interface, cfg.read_path = args.interface or "", ""
    cfg.bpf = args.bpf or cfg.bpf
    cfg.snaplen = args.snaplen
    cfg.promisc = not args.no_promisc
    if args.decoders is not None:
        cfg.decoders = args.decoders
    _positive("--decoders", cfg.decoders, 1)
    if cfg.decoders > 64:
        raise CliError(f"--decoders {cfg.decoders} is more than 64; use at most one per core")
    _captures(args, cfg)
    for flag, attr in (("--flowtrackers", "flowtrackers"), ("--detectors", "detectors")):
        value = getattr(args, attr)
        if value is not None:
            setattr(cfg, attr, value)
        _positive(flag, getattr(cfg, attr), 1)
        if getattr(cfg, attr) > 64:
            raise CliError(f"{flag} {getattr(cfg, attr)} is more than 64; use at most one per core")
    cfg.redis_url = args.redis_url or cfg.redis_url
    cfg.redis_prefix = args.redis_prefix
    cfg.redis_cluster = args.redis_cluster or cfg.redis_cluster
    if cfg.redis_cluster and not cfg.redis_url.startswith(("redis://", "rediss://")):
        raise CliError("--redis-cluster needs --redis-url redis://HOST:PORT/0 naming one node of the cluster")
    if cfg.redis_cluster and ("{" in cfg.redis_prefix or "}" in cfg.redis_prefix):
        raise CliError("--redis-prefix may not contain { or }: they are Redis Cluster hash tags in key names")
    if args.alerts_endpoint:
        cfg.alerts_endpoint = args.alerts_endpoint
    _secure_alerts_endpoint(cfg, args)
    if args.batch_size is not None:
        _positive("--batch-size", args.batch_size, 1)
        cfg.batch_size = args.batch_size
    if args.local_net:
        try:
            cfg.local_nets = local_net_list(args.local_net)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if args.flow_log is not None:
        cfg.flow.flow_log = str(Path(args.flow_log).resolve())
    if args.max_flows is not None:
        _positive("--max-flows", args.max_flows, 1)
        cfg.flow.max_flows = args.max_flows
    if args.keep_packets is not None:
        _positive("--keep-packets", args.keep_packets, 0)
        cfg.keep_packets = args.keep_packets
    det = cfg.detector
    if args.demo:
        det.learning = 5.0
    if args.learning is not None:
        _positive("--learning", args.learning)
        det.learning = args.learning
    for flag, attr, minimum in (
        ("cooldown", "cooldown", 0),
        ("volume_interval", "volume_interval", 1),
        ("ewma_alpha", "ewma_alpha", 0.0),
        ("z_threshold", "z_threshold", 0),
        ("volume_floor", "volume_floor", 0),
        ("min_intervals", "min_intervals", 1),
    ):
        value = getattr(args, flag)
        if value is not None:
            _positive("--" + flag.replace("_", "-"), value, minimum)
            setattr(det, attr, value)
    if not 0 < det.ewma_alpha <= 1:
        raise CliError(f"--ewma-alpha must be in (0, 1], got {det.ewma_alpha}")
    for flag in ("geoip_country_db", "geoip_asn_db"):
        value = getattr(args, flag)
        if value:
            if not Path(value).is_file():
                raise CliError(
                    f"--{flag.replace('_', '-')} {value}: no such file (download GeoLite2 .mmdb files)"
                )
            setattr(det, flag, str(Path(value).resolve()))
    det.attribute_processes = cfg.live
    if args.attribution is not None:
        det.attribution = args.attribution
    if cfg.live and det.attribution == "bpf":
        from services.cli import attribution_mode

        reason = attribution_mode.bpf_unavailable()
        if reason:
            raise CliError(f"--attribution bpf: {reason}; use --attribution auto to fall back to psutil")
    if getattr(args, "launcher", None):
        cfg.launcher = args.launcher
    if cfg.launcher not in LAUNCHERS:
        raise CliError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {cfg.launcher!r}")
    observe_flags.apply(args, cfg)
    roles.apply(args, cfg)
    return cfg


def _secure_alerts_endpoint(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """An alerts endpoint others can reach needs CURVE keys, or an explicit --insecure-listen."""
    endpoint = cfg.alerts_endpoint
    if not endpoint or is_local_endpoint(endpoint):
        return
    keys_dir = args.curve_keys or Path(cfg.state_dir) / "curve"
    if args.curve_keys is not None and not has_server_keys(keys_dir):
        raise CliError(f"--curve-keys {keys_dir}: no server.key_secret there; make keys with `pktscope keys`")
    if has_server_keys(keys_dir) and not args.insecure_listen:
        cfg.alerts_curve_dir = str(keys_dir.resolve())
        return
    if not args.insecure_listen:
        raise CliError(
            f"--alerts-endpoint {endpoint} can be reached from other machines: make CURVE keys with "
            "`pktscope keys` (encrypted, only authorized subscribers), bind tcp://127.0.0.1:PORT, "
            "or pass --insecure-listen to send alerts in the clear to anyone who connects"
        )
    cfg.insecure_listen = True


def _check_source(cfg: PipelineConfig) -> None:
    if cfg.role == "pool":
        return  # its sensors capture
    if cfg.read_path:
        try:
            OfflineSource(cfg.read_path)
        except CaptureError as exc:
            raise CliError(str(exc)) from None
    else:
        # "any" is libpcap's pseudo-interface for every interface at once (Linux cooked headers)
        if cfg.interface != "any" and not Path("/sys/class/net", cfg.interface).exists():
            raise CliError(
                f"cannot capture on interface {cfg.interface!r}: no such interface "
                "(see `ip link`; `any` captures on every interface)"
            )
        if cfg.bpf:
            try:
                check_bpf(cfg.bpf)
            except CaptureError as exc:
                raise CliError(str(exc)) from None
        if os.geteuid() != 0:
            print("pktscope: warning: live capture usually needs root or CAP_NET_RAW", file=sys.stderr)


def _prepare_dirs(cfg: PipelineConfig) -> Path:
    """The run directory, ready; the caller holds its lock already."""
    run_dir = Path(cfg.run_dir)
    pid = running_pid(run_dir)
    if pid is not None:
        raise CliError(
            f"a pipeline is already running in {run_dir} (supervisord pid {pid}); "
            "stop it first or pass another --run-dir"
        )
    for stale in run_dir.glob("*.ipc"):
        stale.unlink(missing_ok=True)
    (run_dir / "redis.sock").unlink(missing_ok=True)
    return run_dir


def _prepare_state(cfg: PipelineConfig) -> None:
    """The private Redis's data directory, migrated to AOF if it is from before."""
    if not cfg.redis_url:
        from shared.redis_server import RedisServerError, migrate_to_aof, needs_migration

        Path(cfg.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        if not needs_migration(Path(cfg.state_dir)):
            return  # redis-py is imported later, while supervisord starts (0.1 s off the start)
        import redis

        try:
            migrate_to_aof(Path(cfg.state_dir))  # a state directory from before AOF keeps its data
        except (RedisServerError, redis.RedisError) as exc:
            raise CliError(f"cannot prepare the Redis data in {cfg.state_dir}: {exc}") from None


def _wait_redis(cfg: PipelineConfig, timeout: float = 15.0) -> redis.Redis:
    import redis
    from redis.exceptions import RedisClusterException

    from shared.redis_conn import connect, redact

    deadline = time.time() + timeout
    while True:
        try:
            # a Cluster client reads the slot map when made: that is its first call to Redis
            r = connect(cfg.effective_redis_url, cluster=cfg.redis_cluster, socket_timeout=5)
            r.ping()
            return r
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                raise CliError(
                    f"Redis at {redact(cfg.effective_redis_url)} is not a cluster node: {exc}"
                ) from None
            if time.time() > deadline:
                raise CliError(
                    f"Redis Cluster at {redact(cfg.effective_redis_url)} did not answer: {exc}"
                ) from None
            time.sleep(0.2)
        except redis.AuthenticationError as exc:
            raise CliError(
                f"Redis at {redact(cfg.effective_redis_url)} refused the password: {exc} "
                "(write it in the URL: redis://:PASSWORD@HOST:PORT/0 or rediss:// for TLS)"
            ) from None
        except (redis.RedisError, ValueError) as exc:
            if time.time() > deadline:
                raise CliError(f"Redis at {redact(cfg.effective_redis_url)} did not answer: {exc}") from None
            time.sleep(0.01)  # redis-server answers within milliseconds of its start


def _check_external_redis(cfg: PipelineConfig) -> None:
    """A --redis-url is tried before anything starts: a wrong password or address fails at once."""
    if cfg.redis_url:
        _wait_redis(cfg, timeout=5.0).close()


class _Interrupt:
    def __init__(self) -> None:
        self.hit = False
        signal.signal(signal.SIGINT, self._set)
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_a) -> None:
        self.hit = True


def _crash_looping(sup: Supervisor, restarts: dict[str, set[int]]) -> str | None:
    for info in sup.processes():
        if info["group"] == "redis":
            continue
        pids = restarts.setdefault(info["name"], set())
        if info["pid"]:
            pids.add(info["pid"])
        if len(pids) > MAX_RESTARTS or info["statename"] == "FATAL":
            return info["name"]
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    _check_source(cfg)
    _check_external_redis(cfg)
    run_dir = Path(cfg.run_dir)
    if len(str(run_dir)) > 80:
        raise CliError(
            f"--run-dir {run_dir} is too long for ipc:// socket paths; use a path under 80 characters"
        )
    try:
        ensure_private_dir(run_dir)
    except UnsafeRunDir as exc:
        raise CliError(str(exc)) from None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirBusy as exc:
        raise CliError(str(exc)) from None
    try:
        return _run_locked(args, cfg)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    run_dir = _prepare_dirs(cfg)
    zygote = ZygoteProcess(run_dir)
    if cfg.launcher == "fork":
        zygote.listen()  # before supervisord: its clients wait in the socket's backlog
    try:
        _prepare_state(cfg)
        cfg.save()
        return _supervise(args, cfg, run_dir, zygote)
    finally:
        zygote.stop()  # after supervisord (and so every service) stopped


def _supervise(args: argparse.Namespace, cfg: PipelineConfig, run_dir: Path, zygote: ZygoteProcess) -> int:
    """supervisord with this host's programs until a replay ends or we are stopped; the summary.
    The zygote (fork launcher) is forked once supervisord is on its way, and asked to stop once
    every program is down, before supervisord's own shutdown."""
    sup = Supervisor(run_dir)
    interrupt = _Interrupt()
    # the services' ends of stream wake the wait for a replay's end at once (shared/end_wake.py)
    wake = EndWake.bind(run_dir / "end-wake.sock") if cfg.read_path else None
    try:
        sup.spawn(render_config(cfg), env=wake.env() if wake is not None else None)
        if cfg.launcher == "fork":
            # the services' imports (redis-py among them, which we need too) while supervisord
            # and Redis start; then the zygote is forked from us, with all of it loaded
            # (preload leaves those modules frozen: out of the collector's sight for the run)
            zygote.fork(service_modules(cfg), before_fork=sup.stop_nudging)
        from services.cli import attribution_mode, pipeline_stats
        from services.cli.redis_wait import PatientRedis
        from shared.redis_conn import redact

        sup.wait_running()
    except (RuntimeError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    keys = Keys(cfg.redis_prefix)
    exit_code = 0
    try:
        r = _wait_redis(cfg)
        source = cfg.read_path or f"live on {cfg.interface}"
        # a replay ends by itself: when its last stage says eos (a sensor's: its flow-trackers)
        ends = bool(cfg.read_path)
        last_stage = cfg.tracker_names() if cfg.role == "sensor" else cfg.detector_names()
        if cfg.role == "pool":
            source = f"detector pool on {cfg.pool_listen}"
            print(
                f"pktscope: detector pool: {cfg.detectors} shard(s) for sensors on "
                + ", ".join(cfg.detector_endpoint_of(k) for k in range(cfg.detectors))
                + (" (CURVE)" if cfg.link_curve_dir else " (PLAIN TCP: --insecure-listen)")
                + "; Ctrl-C stops",
                file=sys.stderr,
            )
        elif cfg.role == "sensor":
            print(
                f"pktscope: sensor {cfg.sensor_name}: flow events to {', '.join(cfg.pool_endpoints)}"
                + (" (CURVE)" if cfg.link_curve_dir else " (PLAIN TCP)"),
                file=sys.stderr,
            )
        if cfg.insecure_listen:
            print(
                f"pktscope: warning: alerts on {cfg.alerts_pub_endpoint} are sent unencrypted and "
                "unauthenticated to anyone who connects (--insecure-listen)",
                file=sys.stderr,
            )
        if cfg.live:
            print(
                f"pktscope: capturing on {cfg.interface} with "
                + (f"{cfg.captures} captures (fanout), " if cfg.captures > 1 else "")
                + f"{cfg.decoders} decoder(s); "
                f"alerts on {cfg.alerts_pub_endpoint}; Ctrl-C stops",
                file=sys.stderr,
            )
            print(f"pktscope: attribution: {attribution_mode.describe(cfg)}", file=sys.stderr)
        fallback_told = not cfg.procwatch_enabled
        patient = PatientRedis(r, redact(cfg.effective_redis_url), lambda: interrupt.hit)
        alerts_from = patient.call(lambda r: pipeline_stats.stream_position(r, keys)) or "0-0"
        restarts: dict[str, set[int]] = {}
        next_process_check = 0.0
        started = time.time()
        bar = None
        if not args.json:
            # imported here, and rich only when the bar is shown (services/cli/progress.py)
            from services.cli.progress import ReplayProgress

            bar = ReplayProgress.maybe(cfg, r, keys)
        while not interrupt.hit:
            if bar is not None:
                bar.update()
            # two fields, not the whole stats hash: this is asked every 20 ms of the replay
            if ends and all(
                (ended or [None, None]) == [cfg.run_id, "1"]
                for ended in (
                    patient.call(lambda r, name=name: r.hmget(keys.stats(name), "run_id", "eos"))
                    for name in last_stage
                )
            ):
                break
            if not fallback_told:
                fallback_told = attribution_mode.tell_fallback(r, keys, cfg.run_id)
            now = time.monotonic()
            # supervisord's view over XML-RPC costs ~2 ms of CPU here and as much in supervisord:
            # four times a second, while the end of a replay (one Redis read) is looked for every 20 ms
            crashed = None
            if now >= next_process_check:
                next_process_check = now + PROCESS_CHECK_EVERY
                crashed = _crash_looping(sup, restarts)
            if crashed:
                log = run_dir / "logs" / f"{crashed}.log"
                print(
                    f"pktscope: service {crashed} keeps crashing; last lines of {log}:\n{_tail(log)}",
                    file=sys.stderr,
                )
                exit_code = 1
                break
            if sup.proc is not None and sup.proc.poll() is not None:
                print(
                    f"pktscope: supervisord exited unexpectedly; see {run_dir / 'supervisord.log'}",
                    file=sys.stderr,
                )
                return 1
            if args.timeout and time.time() - started > args.timeout:
                print(f"pktscope: gave up after {args.timeout} s", file=sys.stderr)
                exit_code = 1
                break
            if wake is not None:
                wake.wait(WAKE_FALLBACK)  # a replay's end: at once (a service's eos wakes us)
            else:
                time.sleep(0.02 if not cfg.live else 0.1)
        if bar is not None:
            bar.close()
        interrupted = interrupt.hit and ends
        if ends and cfg.observer and not exit_code and not interrupted:
            observe_flags.wait_for_observation(
                r, keys, cfg, lambda: interrupt.hit, pause=wake.wait if wake is not None else time.sleep
            )
        if not ends or exit_code or interrupted:
            for group in PIPELINE_SERVICES:  # upstream first, so what is in flight drains downstream
                sup.stop_group(group)
        # the final figures: waited for through an outage, but not past a second Ctrl-C
        patient.stopped = lambda: False
        again = _Interrupt()
        stats = patient.call(lambda r: pipeline_stats.read_all(r, keys, cfg.run_id), lambda: again.hit) or {}
        summary = pipeline_stats.summarize(stats)
        # the durable record, not a counter a restarted detector may have lost part of
        in_stream = patient.call(lambda r: pipeline_stats.alerts_since(r, keys, alerts_from), lambda: again.hit)
        summary["alerts"] = max(summary["alerts"], in_stream or 0)
        summary["redis_outages"] = pipeline_stats.outages(stats, patient.summary())
        outcome = "done" if ends else "stopped"
        if interrupted:
            outcome, exit_code = "interrupted", 130
        elif ends and any(summary["lost"].values()):
            # a replay that lost anything must not look like a clean one
            outcome = "incomplete"
            exit_code = exit_code or EXIT_INCOMPLETE
            print(
                f"pktscope: incomplete: lost {pipeline_stats.format_losses(summary['lost'])}"
                + (
                    " (restarted: " + ", ".join(f"{k} {v}x" for k, v in summary["restarts"].items()) + ")"
                    if summary["restarts"]
                    else ""
                ),
                file=sys.stderr,
            )
        summary["outcome"] = outcome
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(pipeline_stats.format_summary(summary, source, outcome))
        if summary["capture_error"]:
            exit_code = exit_code or 1
    finally:
        sup.shutdown(
            stop_first=(*PIPELINE_SERVICES, "procwatch", *observe_programs.GROUPS, "redis"),
            when_stopped=zygote.ask_to_stop,
        )
        if wake is not None:
            wake.close()
    return exit_code
