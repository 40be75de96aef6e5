"""supervisord programs of the observation services, added to supervisord.conf: the observer
(always: live view, EVE log), the notifier (--notify) and the Prometheus exporter (--metrics-listen)."""

from __future__ import annotations

from shared.config import PipelineConfig

PROGRAM = """
[program:{name}]
command={launch} services.{name} --config {run_dir}/pipeline.json
priority={priority}
startsecs=0
autorestart=unexpected
exitcodes=0
stopwaitsecs=10
stdout_logfile={run_dir}/logs/{name}.log
redirect_stderr=true
environment=PYTHONUNBUFFERED="1"
"""


GROUPS = ("observer", "notifier", "exporter")  # stopped after the pipeline, before Redis


def programs(cfg: PipelineConfig, python: str) -> str:
    from services.launcher.start import command_prefix

    launch = command_prefix(cfg, python)
    # the observer always runs: it keeps the live view of `pktscope inspect` (and the EVE log)
    out = [PROGRAM.format(name="observer", launch=launch, run_dir=cfg.run_dir, priority=8)]
    if cfg.notify:
        out.append(PROGRAM.format(name="notifier", launch=launch, run_dir=cfg.run_dir, priority=5))
    if cfg.metrics_listen:
        out.append(PROGRAM.format(name="exporter", launch=launch, run_dir=cfg.run_dir, priority=5))
    return "".join(out)
