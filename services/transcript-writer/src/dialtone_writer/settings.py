"""Configuration of the transcript-writer; the only module that reads the environment."""

from __future__ import annotations

from dialtone_common.recording_storage import RecordingStorageSettings
from pydantic import Field


class WriterSettings(RecordingStorageSettings):
    """Environment-driven settings (``DATABASE_URL``, ``METRICS_PORT``, ...)."""

    database_url: str = Field(description="PostgreSQL DSN")
    metrics_port: int = Field(default=9103, description="port of /metrics and /healthz")
    durable_name: str = Field(default="transcript-writer", description="JetStream durable consumer name")
    batch_size: int = Field(default=256, ge=1, le=10_000, description="events fetched and written per batch")
    fetch_timeout_s: float = Field(default=1.0, gt=0, description="longest wait for a batch; bounds stop latency")
    ack_wait_s: float = Field(default=30.0, gt=0, description="redelivery delay of an unacknowledged event")
    retry_delay_s: float = Field(default=2.0, gt=0, description="redelivery delay after a database error")
    pool_size: int = Field(default=4, ge=1)
    sweep_interval_s: float = Field(default=30.0, gt=0, description="how often the sweeper looks for abandoned calls")
    sweep_after_s: float = Field(
        default=120.0, ge=0, description="an open session with no event for this long, and no heartbeat, is closed"
    )
    sweep_live_window_s: float = Field(
        default=20.0, ge=0, description="a call heard from (heartbeat) within this window is live and never swept"
    )
    sweep_batch: int = Field(default=500, ge=1, description="most sessions closed per sweep")
    # Recordings (recorder.py); where they are stored: RecordingStorageSettings.
    recordings_enabled: bool = Field(
        default=True, description="record both sides of every call whose agent does not say record = false"
    )
    recordings_retention_days: int = Field(
        default=30, ge=0, description="recordings older than this many days are deleted; 0 keeps them forever"
    )
    recordings_sweep_interval_s: float = Field(default=3600.0, gt=0, description="how often the retention sweep runs")
    recordings_retry_initial_s: float = Field(
        default=1.0, gt=0, description="first wait before storing a recording again (or sweeping again) after a "
        "storage or database error; doubled at each failure, with jitter, up to recordings_retry_max_s",
    )
    recordings_retry_max_s: float = Field(
        default=60.0, gt=0, description="longest wait between two attempts to store a recording; attempts never "
        "stop while the service runs (the spool stays on disk until the recording is stored)",
    )
    min_chunk_ms: int = Field(
        default=40, ge=20, le=1000,
        description="the gateway's MIN_CHUNK_MS: the recorder repeats the gateway's coalescing of agent audio",
    )
