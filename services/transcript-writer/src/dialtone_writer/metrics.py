"""Prometheus metrics of the transcript-writer (served on ``/metrics``)."""

from prometheus_client import Counter, Histogram

EVENTS_WRITTEN = Counter(
    "dialtone_writer_events_written_total", "Events applied to the database, by type", ["type"]
)
BATCHES = Counter("dialtone_writer_batches_total", "Batches committed")
WRITE_SECONDS = Histogram(
    "dialtone_writer_write_seconds",
    "Time to write one batch in one transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REDELIVERIES = Counter("dialtone_writer_redeliveries_total", "Messages JetStream delivered more than once")
DUPLICATES = Counter("dialtone_writer_duplicates_skipped_total", "Events already recorded, skipped")
BAD_EVENTS = Counter("dialtone_writer_bad_events_total", "Messages that are not valid events, terminated")
DB_ERRORS = Counter("dialtone_writer_db_errors_total", "Batches not written because of a database error")
SESSIONS_SWEPT = Counter(
    "dialtone_writer_sessions_swept_total", "Open sessions of calls no longer live, closed by the sweeper"
)
