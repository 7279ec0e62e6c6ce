"""Configuration of the developer commands (``make run``, ``make call``, ``make bench``): the
platform's public configuration, read from the environment here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dialtone_common.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator
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


class EvalSettings(BaseSettings):
    """``make eval`` / ``dialtone eval``: the command's variables and the models it may use."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    runs: int = Field(default=1, description="calls per scenario")
    concurrency: int = Field(default=4, description="test calls at once on each platform")
    agent: str | None = Field(default=None, description="only this agent's scenarios")
    engine: Literal["realtime", "live", "both"] | None = Field(default=None, description="every agent on this engine")
    junit: Path | None = Field(default=None, description="where to write JUnit XML")
    threshold: float | None = Field(default=None, description="pass rate needed (scenarios without pass_rate)")
    running: bool = Field(default=False, description="test on the platform make run started")
    agents_dir: Path = Path("agents")
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = Field(default=None, description="Responses API base of the persona and judge")
    eval_model: str = Field(default="gpt-5-mini", description="text model of persona callers and the judge")
    eval_tts_voice: str = Field(default="alloy", description="OpenAI text-to-speech voice of test callers")
    dialtone_data_dir: Path = Path(".dialtone")

    @field_validator("agent", "engine", "junit", "threshold", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`make eval` passes every variable, empty when not given."""
        return None if value == "" else value

    @field_validator("running", mode="before")
    @classmethod
    def _empty_is_false(cls, value: object) -> object:
        return False if value == "" else value

    @field_validator("concurrency", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return cls.model_fields["concurrency"].default if value == "" else value


class EvalWorkerSettings(ServiceSettings):
    """``dialtone eval-worker``: the Tests page's worker deployed as a process of its own. It dials
    the gateway as Twilio does (signed with the platform's token) and reads the calls back from the
    admin API, so it needs both addresses and both secrets; it connects to NATS as ``eval``."""

    database_url: str | None = Field(default=None, description="the platform's PostgreSQL (eval_runs, eval_results)")
    gateway_url: str | None = Field(
        default=None, description="eval-worker: where it reaches the gateway (http://media-gateway:8000)",
    )
    public_base_url: str | None = Field(
        default=None, description="the gateway's public URL, which Twilio's signatures cover (the gateway's own)",
    )
    twilio_auth_token: SecretStr | None = Field(default=None, description="signs the worker's simulated webhooks")
    twilio_account_sid: str = Field(default="AC" + "0" * 32, description="the AccountSid its calls carry")
    admin_url: str | None = Field(
        default=None, description="eval-worker: where it reads sessions back (http://admin-api:8001)",
    )
    admin_token: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = Field(default=None, description="Responses API base of the persona and judge")
    agents_dir: Path = Field(default=Path("agents"), description="the agents and their scenarios/")
    eval_model: str = Field(default="gpt-5-mini", description="text model of persona callers and the judge")
    eval_tts_voice: str = Field(default="alloy", description="OpenAI text-to-speech voice of test callers")
    metrics_port: int = Field(default=9105, description="eval-worker: port of /healthz and /metrics")

    def missing(self) -> list[str]:
        """The settings it cannot work without, by environment name, unset."""
        required = {
            "DATABASE_URL": self.database_url, "GATEWAY_URL": self.gateway_url,
            "PUBLIC_BASE_URL": self.public_base_url, "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            "ADMIN_URL": self.admin_url, "ADMIN_TOKEN": self.admin_token, "NATS_USER": self.nats_user,
        }  # fmt: skip
        return [name for name, value in required.items() if not value]
