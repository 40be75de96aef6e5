"""procwatch: socket ownership and process lifecycle from kernel tracepoints (eBPF, CO-RE).

See docs/architecture.md ("Process attribution"): the service publishes one *fact* per socket
event (who opened which 5-tuple, when) on a ZeroMQ PUB socket; the detector and the flow-tracker
join flows to those facts (services/procwatch/join.py).
"""
