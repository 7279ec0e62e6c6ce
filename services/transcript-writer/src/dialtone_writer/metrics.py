"""Prometheus metrics of the transcript-writer, in its own registry (served on ``/metrics``)."""

from dialtone_common.metrics import service_registry
from dialtone_common.recording_storage import ERROR_KINDS
from prometheus_client import Counter, Gauge, Histogram

REGISTRY = service_registry()

EVENTS_WRITTEN = Counter(
    "dialtone_writer_events_written_total", "Events applied to the database, by type", ["type"], registry=REGISTRY
)
BATCHES = Counter("dialtone_writer_batches_total", "Batches committed", registry=REGISTRY)
WRITE_SECONDS = Histogram(
    "dialtone_writer_write_seconds",
    "Time to write one batch in one transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LAG_SECONDS = Histogram(
    "dialtone_writer_lag_seconds",
    "An event's own time (set by its publisher) to its commit in PostgreSQL",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
PENDING = Gauge(
    "dialtone_writer_consumer_pending",
    "Events in the stream not yet delivered to this writer's durable consumer, as of its last batch",
    registry=REGISTRY,
)
REDELIVERIES = Counter(
    "dialtone_writer_redeliveries_total", "Messages JetStream delivered more than once", registry=REGISTRY
)
DUPLICATES = Counter("dialtone_writer_duplicates_skipped_total", "Events already recorded, skipped", registry=REGISTRY)
BAD_EVENTS = Counter(
    "dialtone_writer_bad_events_total", "Messages that are not valid events, terminated", registry=REGISTRY
)
DB_ERRORS = Counter(
    "dialtone_writer_db_errors_total", "Batches not written because of a database error", registry=REGISTRY
)
SESSIONS_SWEPT = Counter(
    "dialtone_writer_sessions_swept_total", "Open sessions of calls no longer live, closed by the sweeper",
    registry=REGISTRY,
)
RECORDING_STORAGE_ERRORS = Counter(
    "dialtone_writer_recording_storage_errors_total",
    "Failed requests to the recording store, by operation (put, delete) and kind of error; each is retried "
    "with back-off (a recording's spool is kept until it is stored)",
    ["operation", "kind"], registry=REGISTRY,
)
BACKGROUND_ERRORS = Counter(
    "dialtone_writer_background_errors_total",
    "Unexpected errors in the writer's background tasks, logged and survived (the task goes on), by task",
    ["task"], registry=REGISTRY,
)

# A labelled series exists only from its first increment, which rate() and increase() cannot see:
# the first failed upload of an outage would never show on a graph or in an alert. The series known
# in advance start at zero.
for _operation in ("put", "delete"):
    for _kind in ERROR_KINDS:
        RECORDING_STORAGE_ERRORS.labels(_operation, _kind)
for _task in ("watch", "keep", "retention", "finish"):
    BACKGROUND_ERRORS.labels(_task)

# Webhooks (webhooks.py). Every series known in advance starts at zero.
WEBHOOK_RESULTS = ("delivered", "dead")
WEBHOOK_FAILURES = ("timeout", "network", "http_5xx", "http_429", "http_4xx", "other")
WEBHOOK_DELIVERIES = Counter(
    "dialtone_writer_webhook_deliveries_total",
    "Webhook deliveries finished, by result: delivered (a 2xx) or dead (retries ran out, or refused for good)",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "dialtone_writer_webhook_attempts_total", "Webhook requests sent, each attempt counted", registry=REGISTRY
)
WEBHOOK_FAILED_ATTEMPTS = Counter(
    "dialtone_writer_webhook_failures_total",
    "Webhook attempts that failed, by reason: timeout, network, http_5xx, http_429, http_4xx, other",
    ["reason"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "dialtone_writer_webhook_attempt_seconds",
    "Time of one webhook attempt, request sent to response (or failure)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "dialtone_writer_webhook_backlog",
    "Webhook deliveries not yet delivered nor dead (first try or retry to come), every endpoint",
    registry=REGISTRY,
)
WEBHOOK_OLDEST_AGE = Gauge(
    "dialtone_writer_webhook_oldest_undelivered_age_seconds",
    "Age of the oldest undelivered webhook delivery, since it was enqueued (or resent); 0 with none",
    registry=REGISTRY,
)
for _result in WEBHOOK_RESULTS:
    WEBHOOK_DELIVERIES.labels(_result)
for _reason in WEBHOOK_FAILURES:
    WEBHOOK_FAILED_ATTEMPTS.labels(_reason)

# Post-call analysis (analyst.py).
ANALYSES = Counter(
    "dialtone_writer_analyses_total", "Call analyses settled, by result: done or failed", ["result"], registry=REGISTRY
)
ANALYSIS_ATTEMPTS = Counter(
    "dialtone_writer_analysis_attempts_total", "Requests to the Responses API, by result: ok or error", ["result"],
    registry=REGISTRY,
)
ANALYSIS_SECONDS = Histogram(
    "dialtone_writer_analysis_request_seconds", "Time of one successful analysis request to the Responses API",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120), registry=REGISTRY,
)
ANALYSIS_LATENCY = Histogram(
    "dialtone_writer_analysis_latency_seconds", "A call's end to its stored analysis",
    buckets=(1, 2, 3, 5, 8, 15, 30, 60, 120, 300), registry=REGISTRY,
)
ANALYSIS_COST = Counter("dialtone_writer_analysis_cost_usd_total", "What analyses cost, USD", registry=REGISTRY)
for _result in ("done", "failed"):
    ANALYSES.labels(_result)
for _result in ("ok", "error"):
    ANALYSIS_ATTEMPTS.labels(_result)
