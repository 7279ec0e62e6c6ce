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
    twilio_api_base_url: str | None = Field(default=None, description="Twilio REST base (a local fake in tests)")
    host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("GATEWAY_HOST", "HOST"),
        description="bind address; 0.0.0.0 (or a public address) only when the gateway must be reached directly",
    )
    port: int = Field(default=8000, validation_alias=AliasChoices("GATEWAY_PORT", "PORT"))
    claim_timeout_s: float = Field(default=1.0, description="wait for a bridge to answer an offer, per try")
    prepare_sessions: bool = Field(
        default=True,
        description="at the voice webhook, ask a bridge to open the call's model session while Twilio sets "
        "up the stream (the caller hears the first words sooner); off: the session opens with the stream",
    )
    claim_deadline_s: float = Field(
        default=5.0, description="no bridge took the call (or took it back) this long: apologise and hang up"
    )
    bridge_lease_s: float = Field(
        default=2.0, description="a bridge silent this long (no heartbeat, no frame) has lost the call: re-offer it"
    )
    drain_grace_s: float = Field(
        default=300.0, ge=0,
        description="on SIGTERM, how long calls in progress may go on; then Twilio apologises and hangs up",
    )
    move_before_s: float = Field(
        default=60.0, ge=0,
        description="a draining gateway moves the calls it still holds to another gateway this long before "
        "its grace ends (through Twilio's REST API); 0: no moves, calls still on at the end hear the apology",
    )
    move_wait_s: float = Field(
        default=5.0, gt=0,
        description="a move waits this long for Twilio to stop the old stream, then as long for the new "
        "stream to take the call; else it failed",
    )
    stream_url_ttl_s: float = Field(
        default=300.0, description="a call's stream URL opens its stream only this long after the webhook"
    )
    max_webhook_bytes: int = Field(default=64 * 1024, description="larger webhook bodies are refused unread (413)")
    webhook_read_timeout_s: float = Field(default=5.0, description="a webhook body slower than this is refused (408)")
    max_message_bytes: int = Field(default=64 * 1024, description="larger Twilio messages are refused")
    min_chunk_ms: int = Field(default=40, description="smallest media message sent to Twilio")
    recordings_enabled: bool = Field(
        default=True,
        description="hand each call's frames to the recorder (the transcript-writer) in batches; the same "
        "RECORDINGS_ENABLED=false that turns the writer's recorder off saves the gateway this work",
    )
    default_agent: str | None = Field(default=None, description="agent passed to the bridge when none is chosen")
    apology: str = Field(
        default="We are sorry, we are having technical difficulties. Please call again later. Goodbye.",
        description="what Twilio says before hanging up when no bridge can take the call",
    )

    @property
    def stream_base_url(self) -> str:
        """The Media Streams URL prefix (wss for https, ws for plain http)."""
        base = self.public_base_url.rstrip("/")
        if base.startswith("https://"):
            return "wss://" + base.removeprefix("https://") + "/media"
        return "ws://" + base.removeprefix("http://") + "/media"

    def stream_url(self, path: str) -> str:
        """The URL of one call's stream: ``path`` holds the call id and its token (Twilio's
        ``<Stream url>`` takes no query string), so every call's upgrade signature differs."""
        return f"{self.stream_base_url}/{path}"
