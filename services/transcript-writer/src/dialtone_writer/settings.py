"""Configuration of the transcript-writer; the only module that reads the environment."""

from __future__ import annotations

import os
from pathlib import Path

from dialtone_common.analysis_config import DEFAULT_TEXT_PRICES
from dialtone_common.recording_storage import RecordingStorageSettings
from dialtone_common.redact_config import DEFAULT_REDACT, KINDS, check_kinds
from dialtone_common.webhook_config import (
    GLOBAL,
    WEBHOOK_EVENTS,
    Endpoint,
    WebhookConfigError,
    check_events,
    check_secret,
    check_url,
    load_agent_endpoints,
)
from pydantic import Field, SecretStr, model_validator


class WriterSettings(RecordingStorageSettings):
    """Environment-driven settings (``DATABASE_URL``, ``METRICS_PORT``, ...)."""

    database_url: str = Field(description="PostgreSQL DSN")
    metrics_port: int = Field(default=9103, description="port of /metrics and /healthz")
    durable_name: str = Field(default="transcript-writer", description="JetStream durable consumer name")
    batch_size: int = Field(default=256, ge=1, le=10_000, description="events fetched and written per batch")
    fetch_timeout_s: float = Field(default=1.0, gt=0, description="longest wait for a batch; bounds stop latency")
    batch_linger_s: float = Field(
        default=0.2, ge=0, le=5, description="after a batch smaller than batch_size, wait this long before the next "
        "fetch so that the events of many calls share one transaction (0: write each as it comes)",
    )
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

    # Webhooks (webhooks.py; docs/CONTRACTS.md, Webhooks).
    webhook_url: str | None = Field(
        default=None, description="the global webhook endpoint: every call's events are POSTed here (unset: none)"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="its Standard Webhooks secret, whsec_ and base64 (required with WEBHOOK_URL)"
    )
    webhook_events: str = Field(
        default=",".join(WEBHOOK_EVENTS), description="the events the global endpoint receives, comma-separated"
    )
    agents_dir: Path = Field(
        default=Path("agents"), description="agent definitions, read for their [[webhooks]] (the bridge's AGENTS_DIR)"
    )
    webhook_retry_for_s: float = Field(
        default=24 * 3600.0, gt=0, description="a failing delivery is retried this long, then dead-lettered"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="an attempt without an answer this long failed")
    webhook_backoff_s: float = Field(
        default=5.0, gt=0, description="the first retry's delay; each next one doubles (with jitter: 50-100%)"
    )
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="the longest delay between two retries")
    webhook_ended_delay_s: float = Field(
        default=2.0, ge=0, description="call.ended is first sent this long after its event is written, so late "
        "transcript lines and the final status are in it",
    )
    webhook_concurrency: int = Field(default=4, ge=1, le=100, description="requests in flight per endpoint")
    webhook_poll_s: float = Field(default=1.0, gt=0, description="how often a deliverer looks for due deliveries")

    # Post-call analysis (analyst.py; docs/CONTRACTS.md, Analysis).
    analysis_enabled: bool = Field(
        default=True, description="analyse the calls of agents with an [analysis] table (needs OPENAI_API_KEY "
        "or OPENAI_BASE_URL)",
    )
    openai_api_key: SecretStr | None = Field(default=None, description="OpenAI API key of the analysis (Responses API)")
    openai_base_url: str | None = Field(
        default=None, description="the Responses API's base URL, e.g. a simulator's http://127.0.0.1:8766/v1 "
        "(unset: OpenAI's)",
    )
    analysis_model: str = Field(
        default="gpt-5-mini", description="the text model of an agent's analysis unless its [analysis] names one"
    )
    analysis_prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: dict(DEFAULT_TEXT_PRICES),
        description="USD per 1M tokens by model: input, cached, output (JSON; replaces the whole table)",
    )
    analysis_concurrency: int = Field(default=4, ge=1, le=64, description="analyses in flight per writer")
    analysis_max_attempts: int = Field(default=4, ge=1, le=20, description="API attempts before an analysis fails")
    analysis_backoff_s: float = Field(
        default=2.0, gt=0, description="the delay after a failed attempt; doubled after each one (jitter 50-100%)"
    )
    analysis_backoff_max_s: float = Field(default=60.0, gt=0, description="the longest delay between two attempts")
    analysis_timeout_s: float = Field(default=90.0, gt=0, description="an API request without an answer this long failed")
    analysis_delay_s: float = Field(
        default=2.0, ge=0, description="a call is analysed this long after it ends, so late transcript lines are in"
    )
    analysis_durable_name: str = Field(
        default="transcript-writer-analysis", description="JetStream durable consumer of the analysis worker"
    )
    analysis_ack_wait_s: float = Field(
        default=30.0, gt=0, description="redelivery delay of a call.ended whose analysis went silent (a crash); "
        "a running analysis keeps it with in-progress acks",
    )

    # Personal data kept out of storage (redaction.py; docs/SECURITY.md, Personal data).
    redact: str = Field(
        default=",".join(DEFAULT_REDACT), description="the kinds redacted from the calls of agents without a "
        f"redact list, comma-separated, of: {', '.join(KINDS)} (empty: none)",
    )
    # Retention of operational records (sweeper.py).
    webhook_deliveries_retention_days: int = Field(
        default=30, ge=0, description="webhook deliveries (delivered or dead) older than this many days are "
        "deleted; 0 keeps them forever (a delivery still being tried is never deleted)",
    )
    audit_retention_days: int = Field(
        default=365, ge=0, description="entries of the audit log (who viewed or downloaded what) older than this "
        "many days are deleted; 0 keeps them forever",
    )
    retention_sweep_interval_s: float = Field(
        default=3600.0, gt=0, description="how often old webhook deliveries and audit entries are deleted"
    )

    @model_validator(mode="after")
    def _webhook_pair(self) -> WriterSettings:
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError("WEBHOOK_URL needs WEBHOOK_SECRET (a Standard Webhooks secret, whsec_...)")
        if self.webhook_url:
            check_url(self.webhook_url, "WEBHOOK_URL")
            check_secret(self.webhook_secret.get_secret_value(), "WEBHOOK_SECRET")  # type: ignore[union-attr]
        check_events(self.webhook_events, "WEBHOOK_EVENTS")
        check_kinds(self.redact, "REDACT")
        return self

    def webhook_endpoints(self, env: dict[str, str] | None = None) -> list[Endpoint]:
        """The global endpoint (if set) and every agent's, their secrets read from ``env`` (the
        process environment by default: an agent's ``secret_env`` names a variable of it).

        Raises:
            WebhookConfigError: an agent's webhook is invalid or its secret is not set.
        """
        endpoints = []
        if self.webhook_url and self.webhook_secret is not None:
            endpoints.append(Endpoint(GLOBAL, self.webhook_url, self.webhook_secret.get_secret_value(),
                                      check_events(self.webhook_events, "WEBHOOK_EVENTS")))
        endpoints += load_agent_endpoints(self.agents_dir, os.environ if env is None else env)
        return endpoints


__all__ = ["WebhookConfigError", "WriterSettings"]
