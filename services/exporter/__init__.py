"""The Prometheus exporter service: /metrics from the stats every service already publishes."""
