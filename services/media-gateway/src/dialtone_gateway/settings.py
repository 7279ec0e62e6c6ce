"""media-gateway settings: the only place this service reads the environment."""

from __future__ import annotations

from dialtone_common.settings import ServiceSettings
from pydantic import AliasChoices, Field, SecretStr


class GatewaySettings(ServiceSettings):
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="the URL Twilio reaches; TwiML stream URLs and signature checks are built from it",
    )
    twilio_auth_token: SecretStr = Field(description="checks every webhook and media socket signature")
    twilio_account_sid: str | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=8000, validation_alias=AliasChoices("GATEWAY_PORT", "PORT"))
    claim_timeout_s: float = Field(default=2.0, description="wait for a bridge to claim a call, per try")
    claim_deadline_s: float = Field(default=10.0, description="give up on a call nobody claims")
    max_message_bytes: int = Field(default=64 * 1024, description="larger Twilio messages are refused")
    min_chunk_ms: int = Field(default=40, description="smallest media message sent to Twilio")
    default_agent: str | None = Field(default=None, description="agent passed to the bridge when none is chosen")

    @property
    def stream_url(self) -> str:
        """The Media Streams URL Twilio connects to (wss for https, ws for plain http)."""
        base = self.public_base_url.rstrip("/")
        if base.startswith("https://"):
            return "wss://" + base.removeprefix("https://") + "/media"
        return "ws://" + base.removeprefix("http://") + "/media"
