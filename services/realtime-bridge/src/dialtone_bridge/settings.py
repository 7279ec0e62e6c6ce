"""realtime-bridge settings: the only place this service reads the environment."""

from __future__ import annotations

from pathlib import Path

from dialtone_common.settings import ServiceSettings
from pydantic import Field, SecretStr

# USD per 1M tokens, from OpenAI's model pages. Cached input tokens are a subset of input tokens and
# are billed at the cached price. The default model is the current GA flagship, gpt-realtime-2.1
# (gpt-realtime and gpt-realtime-mini retire in January 2027); the older models keep their prices for
# calls still made with them. A transcription usage with no per-modality split is billed as audio in,
# text out. GPT-Live models are priced per second of session (kind ``session_seconds``, USD per second).
# Override the whole table with the PRICES setting (JSON, same shape).
DEFAULT_MODEL = "gpt-realtime-2.1"
_REALTIME = {"text_in": 4.0, "text_cached": 0.40, "audio_in": 32.0, "audio_cached": 0.40, "audio_out": 64.0}
_MINI = {"text_in": 0.60, "text_cached": 0.06, "text_out": 2.40, "audio_in": 10.0, "audio_cached": 0.30,
         "audio_out": 20.0}  # fmt: skip
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-realtime-2.1": {**_REALTIME, "text_out": 24.0},
    "gpt-realtime-2.1-mini": dict(_MINI),
    "gpt-realtime-2": {**_REALTIME, "text_out": 24.0},
    "gpt-realtime-1.5": {**_REALTIME, "text_out": 16.0},
    "gpt-realtime": {**_REALTIME, "text_out": 16.0},
    "gpt-realtime-mini": dict(_MINI),
    # GPT-Live bills the session by the second ($0.05 per active minute); the backend model it
    # delegates to bills its tokens under its own entry (add one to PRICES for another backend).
    "gpt-live-1.1": {"session_seconds": 0.05 / 60},
    "gpt-live-1": {"session_seconds": 0.05 / 60},
    "gpt-5.4-mini": {"text_in": 0.75, "text_cached": 0.075, "text_out": 4.50},  # the default backend
    "gpt-5.4-nano": {"text_in": 0.20, "text_cached": 0.02, "text_out": 1.25},
    "gpt-5.4": {"text_in": 2.50, "text_cached": 0.25, "text_out": 15.00},
    "gpt-4o-mini-transcribe": {
        "text_in": 1.25, "text_cached": 1.25, "text_out": 5.0,
        "audio_in": 3.0, "audio_cached": 3.0, "audio_out": 0.0,
    },
}


class BridgeSettings(ServiceSettings):
    openai_api_key: SecretStr | None = Field(default=None, description="unset: talk to a simulator")
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    openai_realtime_model: str = DEFAULT_MODEL
    openai_live_url: str = Field(
        default="wss://api.openai.com/v1/live/sessions", description="GPT-Live WebSocket URL (agents with engine = \"live\")"
    )
    transcription_model: str = "gpt-4o-mini-transcribe"
    agents_dir: Path = Field(default=Path("agents"), description="one folder per agent: agent.toml, system.md")
    metrics_port: int = 9101
    max_calls: int = Field(default=1000, description="calls this instance claims at most")
    tool_timeout_s: float = Field(default=15.0, description="upper bound on a tool request over NATS")
    filler_after_s: float = Field(default=1.5, description="a slow tool makes the agent say a filler after this")
    connect_attempts: int = Field(default=6, description="Realtime connection attempts before giving up")
    prices: dict[str, dict[str, float]] = Field(default_factory=lambda: DEFAULT_PRICES)
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str | None = Field(default=None, description="Twilio REST base (a local fake in tests)")
    prepare_ttl_s: float = Field(
        default=10.0, gt=0,
        description="a model session opened at a call's voice webhook is closed if its call has not come to this "
        "bridge within this long (the stream never came, or another bridge took the call)",
    )
    realtime_warm_sockets: int = Field(
        default=0, ge=0, le=50,
        description="Realtime sockets each bridge keeps open ahead of calls, so a call's session needs only its "
        "configuration (0: none; each call opens its own socket, at the voice webhook)",
    )
    realtime_warm_max_age_s: float = Field(
        default=600.0, gt=0, description="a warm Realtime socket unused this long is closed and replaced",
    )
    heartbeat_s: float = Field(default=5.0, description="live-call heartbeat for the admin API's live view")
    drain_grace_s: float = Field(
        default=60.0, ge=0,
        description="on SIGTERM, how long calls in progress may go on here before they are handed to another bridge",
    )
    call_heartbeat_s: float = Field(
        default=0.5, description="lease heartbeat to each call's gateway; keep well under its BRIDGE_LEASE_S"
    )
