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
AUTH_FAILURES = Counter(
    "dialtone_admin_auth_failures_total",
    "Wrong admin tokens presented, by how: sign_in (the dashboard's form) or bearer (the API)",
    ["via"],
    registry=REGISTRY,
)
AUTH_THROTTLED = Counter(
    "dialtone_admin_auth_throttled_total",
    "Requests refused with 429 for too many wrong tokens, by the limit reached: address or global",
    ["scope"],
    registry=REGISTRY,
)
for _via in ("sign_in", "bearer"):
    AUTH_FAILURES.labels(_via)
for _scope in ("address", "global"):
    AUTH_THROTTLED.labels(_scope)
