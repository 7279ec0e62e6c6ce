"""Configuration of the admin API; the only module that reads the environment."""

from __future__ import annotations

from dialtone_common.recording_storage import RecordingStorageSettings
from pydantic import AliasChoices, Field, SecretStr, field_validator

MIN_TOKEN_LENGTH = 32
# Values that a template, a tutorial or an earlier release shipped: never a real token.
PLACEHOLDER_TOKENS = frozenset({
    "change-me-admin-token", "change-me", "changeme", "admin", "password", "secret", "token",
    "admin-token", "your-admin-token", "replace-me", "xxx",
})  # fmt: skip
HOW_TO_MAKE_ONE = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class AdminSettings(RecordingStorageSettings):  # where recordings are stored (GET /sessions/{id}/recording)
    """Environment-driven settings (``DATABASE_URL``, ``ADMIN_TOKEN``, ``ADMIN_PORT``, ...)."""

    database_url: str = Field(description="PostgreSQL DSN")
    admin_token: SecretStr = Field(
        description=f"bearer token for the API and the dashboard: at least {MIN_TOKEN_LENGTH} characters, "
        "random, never a template's placeholder"
    )
    port: int = Field(default=8001, validation_alias=AliasChoices("ADMIN_PORT", "port"))
    host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("ADMIN_HOST", "HOST"),
        description="bind address (ADMIN_HOST or HOST). The default serves this machine only, such as a "
        "reverse proxy in front (deploy/Caddyfile); 0.0.0.0 or a public address only when the API must be "
        "reached directly, and then over TLS",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="proxies (comma-separated addresses or networks) whose X-Forwarded-For/-Proto are "
        "believed; requests from anywhere else are taken at their socket address",
    )
    db_timeout_s: float = Field(
        default=1.5, gt=0, description="a request's database work, waiting for a connection included, "
        "longer than this answers 503 (a frozen or overloaded database)"
    )
    metrics_port: int | None = Field(
        default=None,
        validation_alias=AliasChoices("ADMIN_METRICS_PORT", "metrics_port"),
        description="serve /metrics on this port (on METRICS_HOST) instead of the public listener; set it "
        "wherever the admin API's port is published (Kubernetes behind an ingress)",
    )
    secure_cookies: bool | None = Field(
        default=None,
        description="mark the session cookie Secure: true behind a TLS proxy whatever the request says; "
        "unset follows the request's scheme (X-Forwarded-Proto from a trusted proxy)",
    )
    auth_failures_per_address: int = Field(
        default=10, ge=1, description="wrong tokens one client address may present per minute before 429"
    )
    auth_failures_global: int = Field(
        default=100, ge=1, description="wrong tokens from all addresses per minute before every address that "
        "has failed gets 429 (addresses with no failure are never held off)",
    )
    session_ttl_s: float = Field(
        default=8 * 3600, gt=0, description="a dashboard sign-in lasts this long (seconds), then asks again"
    )
    live_ttl_s: float = Field(default=15.0, gt=0, description="a live call not heard from for this long is gone")

    # Outbound calls (POST /calls) go through Twilio's REST API; without credentials they answer 503.
    twilio_account_sid: str | None = Field(default=None, description="Twilio account placing outbound calls")
    twilio_auth_token: SecretStr | None = Field(default=None, description="Twilio auth token (REST basic auth)")
    twilio_api_base_url: str | None = Field(default=None, description="Twilio REST base (a local fake in tests)")
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="the media-gateway's public URL, where Twilio fetches TwiML and posts status callbacks",
    )
    outbound_from_number: str | None = Field(
        default=None, description="caller id of outbound calls that do not name one (E.164)"
    )

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token.strip().lower() in PLACEHOLDER_TOKENS or "change-me" in token.lower():
            raise ValueError(f"ADMIN_TOKEN is a placeholder, not a secret; {HOW_TO_MAKE_ONE}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"ADMIN_TOKEN has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}; {HOW_TO_MAKE_ONE}"
            )
        return value
