"""supervisord programs of the observation services, added to supervisord.conf when configured:
the notifier (--notify) and the Prometheus exporter (--metrics-listen)."""

from __future__ import annotations

from shared.config import PipelineConfig

PROGRAM = """
[program:{name}]
command={python} -m services.{name} --config {run_dir}/pipeline.json
priority={priority}
startsecs=0
autorestart=unexpected
exitcodes=0
stopwaitsecs=10
stdout_logfile={run_dir}/logs/{name}.log
redirect_stderr=true
environment=PYTHONUNBUFFERED="1"
"""


def programs(cfg: PipelineConfig, python: str) -> str:
    out = []
    if cfg.notify:
        out.append(PROGRAM.format(name="notifier", python=python, run_dir=cfg.run_dir, priority=5))
    if cfg.metrics_listen:
        out.append(PROGRAM.format(name="exporter", python=python, run_dir=cfg.run_dir, priority=5))
    return "".join(out)
