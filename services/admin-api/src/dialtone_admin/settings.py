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
