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
    offset_ms: float | None = None  # from the start of the media stream (docs/CONTRACTS.md)
    heard_ms: float | None = None  # of an agent line: audio the caller heard ...
    audio_ms: float | None = None  # ... of the audio the model generated for it
    full_text: str | None = None  # the whole generated text of a line cut off (text is the heard part)


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


class TurnEntry(BaseModel):
    """One answered turn: the caller stopped speaking -> first agent audio sent / heard (ms)."""

    turn: int
    item_id: str | None
    offset_ms: float | None
    sent_ms: float
    heard_ms: float | None
    tool_ms: float
    tools: int
    at: datetime


class Latency(BaseModel):
    """The call's turn latencies in ms, percentiles over its turns (None without turns)."""

    turns: int = 0
    sent_p50: float | None = None
    sent_p95: float | None = None
    heard_p50: float | None = None
    heard_p95: float | None = None


class CostKinds(BaseModel):
    audio_in: float = 0
    audio_out: float = 0
    text_in: float = 0
    text_out: float = 0
    cached: float = 0
    transcription: float = 0
    other: float = 0  # usage events of bridges older than the split by kind


class TokenKinds(BaseModel):
    audio_in: int = 0
    audio_out: int = 0
    text_in: int = 0
    text_out: int = 0
    cached: int = 0
    transcription: int = 0
    other: int = 0


class Cost(BaseModel):
    """What the call cost, by kind, priced by the bridge's PRICES (docs/CONTRACTS.md)."""

    usd: CostKinds
    tokens: TokenKinds
    total_usd: float
    duration_s: float | None
    per_minute_usd: float | None
    hosted_fee_per_minute_usd: float
    hosted_fee_usd: float | None
    total_with_hosted_fee_usd: float | None


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
    turns: list[TurnEntry] = []
    latency: Latency = Latency()
    cost: Cost | None = None


class LivePage(BaseModel):
    items: list[dict[str, Any]]
