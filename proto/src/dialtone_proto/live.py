"""Heartbeat of a live call on ``dt.v1.live.<call_id>`` (core NATS, every few seconds)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class LiveCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.live"] = "call.live"
    call_id: str
    agent: str
    started_at: datetime
    bridge_id: str
    from_number: str | None = None
    to_number: str | None = None
    direction: Literal["inbound", "outbound"] = "inbound"
    state: Literal["listening", "speaking", "tool", "ending"] = "listening"
