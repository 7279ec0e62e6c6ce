"""Prometheus metrics of ``dialtone eval-worker``, in its own registry (served on ``/metrics``)."""

from dialtone_common.metrics import service_registry
from prometheus_client import Counter

REGISTRY = service_registry()

EVAL_CALLS = Counter(
    "dialtone_eval_calls_total",
    "Test calls this worker placed and judged, by verdict (passed, failed).",
    ["verdict"],
    registry=REGISTRY,
)
for _verdict in ("passed", "failed"):  # both series from zero, so the first failure shows in increase()
    EVAL_CALLS.labels(_verdict)
