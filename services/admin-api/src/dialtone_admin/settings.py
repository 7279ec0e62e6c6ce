"""Configuration of the admin API; the only module that reads the environment."""

from __future__ import annotations

from dialtone_common.settings import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr


class AdminSettings(ServiceSettings):
    """Environment-driven settings (``DATABASE_URL``, ``ADMIN_TOKEN``, ``ADMIN_PORT``, ...)."""

    database_url: str = Field(description="PostgreSQL DSN")
    admin_token: SecretStr = Field(description="bearer token for the API and the dashboard")
    port: int = Field(default=8001, validation_alias=AliasChoices("ADMIN_PORT", "port"))
    host: str = "0.0.0.0"
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
