"""The exporter process: serves http://ADDR:PORT/metrics (prometheus_client) from the stats hashes."""

from __future__ import annotations

import logging
import time

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from services.cli.observe_flags import check_listen
from services.exporter.metrics import PipelineCollector
from shared.config import PipelineConfig
from shared.observe_keys import ObserveKeys
from shared.redis_conn import connect
from shared.service import StopFlag, loop_starting
from shared.stats import ServiceStats

log = logging.getLogger(__name__)


class ExporterService:
    def __init__(self, cfg: PipelineConfig, stop: StopFlag) -> None:
        self.cfg = cfg
        self.stop = stop

    def run(self) -> int:
        host, port = check_listen(self.cfg.metrics_listen)
        r = connect(self.cfg.effective_redis_url, cluster=self.cfg.redis_cluster, socket_timeout=5)
        registry = CollectorRegistry(auto_describe=False)
        collector = PipelineCollector(r, self.cfg)
        registry.register(collector)
        server, thread = start_http_server(port, addr=host, registry=registry)
        log.info("exporter: serving http://%s:%d/metrics", host, port)
        stats = ServiceStats("exporter", r, ObserveKeys(self.cfg.redis_prefix))
        stats.info["listen"] = self.cfg.metrics_listen
        loop_starting(stats)
        while not self.stop:
            stats.c["scrape_errors"] = collector.scrape_errors
            stats.maybe_flush()  # counts a Redis error, never raises one
            time.sleep(0.2)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        return 0
