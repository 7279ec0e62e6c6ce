"""Response shapes of the admin API (docs/CONTRACTS.md), declared for validation and OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class SessionSummary(BaseModel):
    call_sid: str
    agent: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    status: str | None
    outcome: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str | None
    cost_usd: float
    transferred_to: str | None
    answered_by: str | None


class SessionPage(BaseModel):
    items: list[SessionSummary]
    next_cursor: str | None


class SessionCount(BaseModel):
    count: int
    exact: bool  # False: more than 10,000 match, and count is the planner's estimate


class Facets(BaseModel):
    agent: list[str]
    status: list[str]
    direction: list[str]
    outcome: list[str]


class TranscriptEntry(BaseModel):
    seq: int
    role: str
    text: str
    agent: str
    source: str
    interrupted: bool
    untranscribed: bool = False  # the caller spoke but the words have no text (text is empty)
    at: datetime


class ToolCallEntry(BaseModel):
    tool_call_id: str
    seq: int
    name: str
    agent: str
    arguments: Any
    ok: bool
    result: Any
    error: str | None
    duration_ms: float
    at: datetime


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    responses: int = 0
    transcription_tokens: int = 0
    cost_usd: float = 0.0


class StatusEntry(BaseModel):
    status: str
    source: str
    answered_by: str | None
    at: datetime


class AgentChange(BaseModel):
    from_agent: str
    to_agent: str
    at: datetime


class SessionDetail(SessionSummary):
    transcript: list[TranscriptEntry]
    tool_calls: list[ToolCallEntry]
    usage: Usage
    status_history: list[StatusEntry]
    metrics: dict[str, float]
    agents: list[AgentChange]


class LivePage(BaseModel):
    items: list[dict[str, Any]]
