"""Request/reply messages for claiming a call (``dt.v1.calls.offer``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CallOffer(BaseModel):
    """Sent by the media-gateway when Twilio starts a stream; one bridge claims it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.offer"] = "call.offer"
    call_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    stream_sid: str
    account_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: Literal["inbound", "outbound"] = "inbound"
    agent: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    gateway_id: str | None = None


class CallAnswer(BaseModel):
    """A bridge's reply to an offer. ``accepted`` false carries a reason (e.g. draining)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.answer"] = "call.answer"
    call_id: str
    accepted: bool
    bridge_id: str
    agent: str | None = None
    reason: str | None = None
