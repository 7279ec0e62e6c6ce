"""Settings every service shares. Each service subclasses ``ServiceSettings`` in its own
``settings.py``; nothing else reads the environment."""

from __future__ import annotations

from typing import TypedDict

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsCredentials(TypedDict):
    """``bus.connect``'s keyword arguments for this service's NATS user."""

    user: str | None
    password: str | None


class ServiceSettings(BaseSettings):
    """Environment-driven settings. A developer's ``.env`` is never read implicitly."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server(s), comma-separated")
    nats_user: str = Field(
        default="", description="this service's NATS user (docs/SECURITY.md); unset: connect without credentials",
    )
    nats_password: SecretStr | None = Field(default=None, description="the NATS user's password; never logged")
    log_level: str = "INFO"
    instance_id: str = Field(default="", description="name of this instance in logs and metrics")
    jetstream_replicas: int = Field(
        default=1, ge=1, le=5,
        description="replicas of the event stream and the calls bucket when a service creates them; 3 on a "
        "3-node NATS cluster keeps events and call records through the loss of a node",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address /metrics and /healthz listen on; the default serves this machine only. "
        "Set METRICS_HOST=0.0.0.0 (or one interface's address) for a scraper on another host or outside "
        "the container, and keep that port off the internet",
    )

    @model_validator(mode="after")
    def _nats_credentials_together(self) -> ServiceSettings:
        has_password = bool(self.nats_password and self.nats_password.get_secret_value())
        if bool(self.nats_user) != has_password:
            raise ValueError("NATS_USER and NATS_PASSWORD go together: set both (the service's NATS user) or neither")
        return self

    def nats_credentials(self) -> NatsCredentials:
        """``user`` and ``password`` for ``bus.connect``: both None when no NATS user is set."""
        if not self.nats_user:
            return {"user": None, "password": None}
        assert self.nats_password is not None
        return {"user": self.nats_user, "password": self.nats_password.get_secret_value()}

    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]
