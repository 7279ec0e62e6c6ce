"""Prometheus metrics of the tool-runner, in its own registry (served on ``/metrics``)."""

from dialtone_common.metrics import service_registry
from prometheus_client import Counter, Gauge, Histogram

REGISTRY = service_registry()

TOOL_CALLS = Counter(
    "dialtone_tool_calls_total",
    "Tool calls answered, by tool and result (ok, error, timeout, invalid, unknown).",
    ["tool", "result"],
    registry=REGISTRY,
)
TOOL_DURATION = Histogram(
    "dialtone_tool_duration_seconds",
    "Time from receiving a tool call to having its reply (queueing included).",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
QUEUED = Gauge(
    "dialtone_tool_calls_queued", "Tool calls waiting for a free slot (MAX_CONCURRENCY reached).", registry=REGISTRY
)
IN_FLIGHT = Gauge("dialtone_tool_calls_in_flight", "Tool calls being executed right now.", registry=REGISTRY)


def start_at_zero(tools: list[str]) -> None:
    """Create the series of every tool's results at zero: a labelled series exists only from its
    first increment, which rate() and increase() never see, so a tool's first error would not show."""
    for tool in tools:
        TOOL_DURATION.labels(tool)
        for result in ("ok", "error", "timeout", "invalid"):
            TOOL_CALLS.labels(tool, result)
