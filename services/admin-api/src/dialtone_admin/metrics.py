"""Prometheus metrics of the admin API, in its own registry (served on ``/metrics``)."""

from dialtone_common.metrics import service_registry
from prometheus_client import Counter, Histogram

REGISTRY = service_registry()

REQUESTS = Counter(
    "dialtone_admin_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
LATENCY = Histogram("dialtone_admin_request_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY)
OUTBOUND = Counter(
    "dialtone_admin_outbound_calls_total", "Outbound calls requested, by result", ["result"], registry=REGISTRY
)
