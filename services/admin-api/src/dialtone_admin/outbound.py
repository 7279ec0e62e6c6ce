"""Outbound calls: ``POST /calls`` asks Twilio to dial a number and connect it to an agent.

The call is placed with ``url=`` (not inline TwiML): once the callee answers, Twilio fetches the
media-gateway's voice webhook, whose query string names the agent and its variables (``agent``,
``v_<name>``), and with synchronous answering-machine detection the same request carries
``AnsweredBy``, so the agent knows it reached a voicemail. Status callbacks go to the gateway's
``/twilio-status``, which records them as ``call.status`` events; that is how the session appears
in the database (direction ``outbound`` from the first callback). Nothing is published here.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlencode

import aiohttp
from dialtone_common.twilio_rest import rest_client
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from twilio.base.exceptions import TwilioRestException

from dialtone_admin.auth import require_token
from dialtone_admin.errors import ErrorBody, responses
from dialtone_admin.metrics import OUTBOUND
from dialtone_admin.settings import AdminSettings

log = logging.getLogger(__name__)


# Matched with fullmatch: `$` would also match before a final newline ("+15551234567\n").
E164_PATTERN = r"\+[1-9][0-9]{1,14}"
_E164 = re.compile(E164_PATTERN)
_AGENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VARIABLE = re.compile(r"[A-Za-z0-9_]{1,40}")
MAX_VARIABLES = 50
MAX_VARIABLE_LENGTH = 500
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
NO_CREDENTIALS = "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"


def _e164(value: str | None, field: str) -> str | None:
    if value is not None and not _E164.fullmatch(value):
        raise ValueError(f"{field} must be an E.164 phone number such as +15551234567, got {value[:40]!r}")
    return value


def _plain_text(text: str) -> bool:
    """No NUL and no lone surrogate (JSON can carry ``"\\ud800"``; UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


class OutboundCallRequest(BaseModel):
    """Body of ``POST /calls``."""

    # Strict: JSON says what it means; 0 is not false and 5 is not "5".
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    to: str = Field(
        description="the number to call, E.164",
        examples=["+15551234567"],
        json_schema_extra={"pattern": f"^{E164_PATTERN}$"},
    )
    agent: str | None = Field(
        default=None,
        description="the agent to connect; the gateway's default if null",
        json_schema_extra={"pattern": f"^{_AGENT.pattern}$"},
    )
    variables: dict[str, str] = Field(
        default_factory=dict, description="values for the agent's instructions ({name} placeholders)"
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        description="caller id (a Twilio number, E.164); OUTBOUND_FROM_NUMBER if null",
        json_schema_extra={"pattern": f"^{E164_PATTERN}$"},
    )
    machine_detection: bool = Field(default=True, description="ask Twilio whether a human or a machine answered")

    @field_validator("to")
    @classmethod
    def _check_to(cls, value: str) -> str:
        return _e164(value, "to")  # type: ignore[return-value]

    @field_validator("from_")
    @classmethod
    def _check_from(cls, value: str | None) -> str | None:
        return _e164(value, "from")

    @field_validator("agent")
    @classmethod
    def _check_agent(cls, value: str | None) -> str | None:
        if value is not None and not _AGENT.fullmatch(value):
            raise ValueError("agent must be 1-64 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("variables")
    @classmethod
    def _check_variables(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_VARIABLES:
            raise ValueError(f"at most {MAX_VARIABLES} variables")
        for name, text in value.items():
            if not _VARIABLE.fullmatch(name):
                raise ValueError(f"variable name {name[:50]!r} must be 1-40 characters of letters, digits or '_'")
            if len(text) > MAX_VARIABLE_LENGTH:
                raise ValueError(f"variable {name!r} is longer than {MAX_VARIABLE_LENGTH} characters")
            # It travels in the voice URL (UTF-8, percent-encoded) into the agent's instructions.
            if not _plain_text(text):
                raise ValueError(f"variable {name!r} must be UTF-8 text without NUL characters")
        return value


class TwilioFailure(BaseModel):
    message: str = Field(description="Twilio refused the call, or could not be reached")
    twilio_status: int | None = Field(default=None, description="Twilio's HTTP status")
    twilio_code: int | None = Field(default=None, description="Twilio's error code")
    twilio_message: str | None = Field(default=None, description="Twilio's explanation")


class TwilioFailureBody(BaseModel):
    """The body of a 502 from ``POST /calls``."""

    detail: TwilioFailure


class OutboundCallResponse(BaseModel):
    """What Twilio accepted: the call's sid and its first status (``queued``)."""

    model_config = ConfigDict(populate_by_name=True)

    call_sid: str
    status: str
    to: str
    from_: str = Field(alias="from")
    agent: str | None


def voice_url(public_base_url: str, agent: str | None, variables: dict[str, str]) -> str:
    """The gateway's voice webhook URL carrying the agent and its variables in the query string.

    Twilio signs the full URL, query included, and the gateway checks the signature against it.
    """
    query = ([("agent", agent)] if agent else []) + [(f"v_{name}", value) for name, value in variables.items()]
    base = f"{public_base_url.rstrip('/')}/twilio-voice"
    return f"{base}?{urlencode(query)}" if query else base


class Dialer:
    """The Twilio REST client of this admin API instance (one HTTP session, closed on shutdown).

    Args:
        settings: needs ``twilio_account_sid`` and ``twilio_auth_token``.
    """

    def __init__(self, settings: AdminSettings) -> None:
        assert settings.twilio_account_sid and settings.twilio_auth_token
        self._settings = settings
        self.client, self._http = rest_client(
            settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value(), settings.twilio_api_base_url
        )

    @classmethod
    def from_settings(cls, settings: AdminSettings) -> Dialer | None:
        """A dialer, or None when Twilio credentials are not configured."""
        if not settings.twilio_account_sid or not settings.twilio_auth_token:
            return None
        return cls(settings)

    async def close(self) -> None:
        await self._http.close()

    async def place(self, call: OutboundCallRequest, from_number: str) -> OutboundCallResponse:
        """Ask Twilio to dial; raises ``TwilioRestException`` if it refuses."""
        base = self._settings.public_base_url.rstrip("/")
        options: dict[str, Any] = {}
        if call.machine_detection:
            # Synchronous AMD: Twilio fetches the voice URL after detection, with AnsweredBy.
            options["machine_detection"] = "Enable"
        created = await self.client.calls.create_async(
            to=call.to,
            from_=from_number,
            url=voice_url(base, call.agent, call.variables),
            method="POST",
            status_callback=f"{base}/twilio-status",
            status_callback_method="POST",
            status_callback_event=STATUS_EVENTS,
            **options,
        )
        return OutboundCallResponse(
            call_sid=created.sid,
            status=created.status or "queued",
            to=created.to or call.to,
            from_=created._from or from_number,  # the SDK names the field `_from`
            agent=call.agent,
        )


router = APIRouter(dependencies=[Depends(require_token)])


@router.post(
    "/calls",
    status_code=status.HTTP_201_CREATED,
    response_model=OutboundCallResponse,
    response_model_by_alias=True,
    tags=["calls"],
    responses={
        400: {"model": ErrorBody, "description": "the body is not JSON text"},
        **responses(401),
        502: {"model": TwilioFailureBody, "description": "Twilio refused the call or could not be reached"},
        503: {"model": ErrorBody, "description": NO_CREDENTIALS},
    },
)
async def place_call(body: OutboundCallRequest, request: Request) -> OutboundCallResponse:
    """Place an outbound call that an agent handles once it is answered.

    A 422 names what is wrong: the number, the agent, a variable, or no caller id at all.
    """
    dialer: Dialer | None = request.app.state.dialer
    settings: AdminSettings = request.app.state.settings
    if dialer is None:
        OUTBOUND.labels("unconfigured").inc()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=NO_CREDENTIALS)
    from_number = body.from_ or settings.outbound_from_number
    if not from_number:
        OUTBOUND.labels("invalid").inc()
        # The same shape as every other 422, so a client reads one error format.
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "from"), "input": None,
              "msg": "no caller id: pass 'from' or set OUTBOUND_FROM_NUMBER"}]
        )
    try:
        placed = await dialer.place(body, from_number)
    except TwilioRestException as exc:
        OUTBOUND.labels("refused").inc()
        log.warning("Twilio refused an outbound call: HTTP %s, code %s: %s", exc.status, exc.code, exc.msg)
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            detail={"message": "Twilio refused the call", "twilio_status": exc.status,
                    "twilio_code": exc.code, "twilio_message": exc.msg},
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        OUTBOUND.labels("unreachable").inc()
        log.warning("Twilio unreachable for an outbound call: %s", type(exc).__name__)
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, detail={"message": f"Twilio unreachable: {type(exc).__name__}"}
        ) from exc
    OUTBOUND.labels("placed").inc()
    log.info("outbound call %s placed (agent %s, status %s)", placed.call_sid, body.agent or "default", placed.status)
    return placed


