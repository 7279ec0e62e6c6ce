"""Configuration of the developer commands (``make run``, ``make call``, ``make bench``): the
platform's public configuration, read from the environment here and nowhere else."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DevSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    nats_url: str | None = None
    database_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_realtime_url: str | None = None
    openai_live_url: str | None = None
    public_base_url: str | None = None
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        description="make run: the platform's token (unset: a development token kept in secrets.json); "
        "make call: the token it signs with (unset: that development token). Never written to run.json",
    )
    twilio_account_sid: str | None = None
    twilio_api_base_url: str | None = None
    admin_token: SecretStr | None = None
    webhook_url: str | None = Field(default=None, description="make run: the global webhook endpoint")
    webhook_secret: SecretStr | None = Field(default=None, description="make run: its whsec_ secret")
    dialtone_data_dir: Path = Field(
        default=Path(".dialtone"),
        description="embedded servers' data, logs, run.json and secrets.json; private to its owner (0700)",
    )
    simulator_port: int = 8765
    live_simulator_port: int = 8766
    responses_simulator_port: int = Field(
        default=8767, description="make run without OPENAI_API_KEY: the Responses API simulator's port (analysis)"
    )
    gateway_port: int = 8000
    admin_port: int = 8001
    bridge_metrics_port: int = 9101
    tools_metrics_port: int = 9102
    writer_metrics_port: int = 9103
