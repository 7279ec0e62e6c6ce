"""Prometheus metrics of the tool-runner (process-wide, served on ``/metrics``)."""

from prometheus_client import Counter, Gauge, Histogram

TOOL_CALLS = Counter(
    "dialtone_tool_calls_total",
    "Tool calls answered, by tool and result (ok, error, timeout, invalid, unknown).",
    ["tool", "result"],
)
TOOL_DURATION = Histogram(
    "dialtone_tool_duration_seconds",
    "Time from receiving a tool call to having its reply.",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("dialtone_tool_calls_in_flight", "Tool calls being executed right now.")
