"""The read model of one call session: the JSON that the admin API serves for
``GET /sessions/{call_sid}`` and that webhooks carry as their ``data``. One query path and one
model, so what an operator's system receives is exactly what the API answers.

It reads the tables the transcript-writer fills; callers pass a connection from a pool made by
``dialtone_common.db.create_pool`` (jsonb as Python objects).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

# What a hosted voice-agent engine charges per minute on top of the model: the admin API shows what
# it would have added to each call (cost.hosted_fee_usd), next to the call's own cost per minute.
HOSTED_FEE_USD_PER_MIN = 0.09
# The kinds of the cost breakdown (the writer's mapping.COST_KINDS).
COST_KINDS = ("audio_in", "audio_out", "text_in", "text_out", "cached", "transcription", "analysis", "other")

SUMMARY_COLUMNS = """
    s.id, s.call_sid, s.agent, s.direction, s.from_number, s.to_number, s.status, s.outcome,
    s.started_at, s.ended_at, EXTRACT(EPOCH FROM s.ended_at - s.started_at)::float8 AS duration_s,
    s.end_reason, s.cost_usd::float8 AS cost_usd, s.transferred_to, s.answered_by, s.test_run
"""


def summary(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out.pop("id", None)
    return out


async def get_session(conn: asyncpg.Connection, call_sid: str) -> dict[str, Any] | None:
    """Everything about one call, or None if it is unknown.

    Args:
        conn: a connection from a pool made by ``dialtone_common.db.create_pool`` (jsonb codec).
        call_sid: the call id.
    """
    row = await conn.fetchrow(
        f"SELECT {SUMMARY_COLUMNS}, s.usage, s.metrics, s.cost_breakdown, s.analysis FROM call_sessions s"
        " WHERE s.call_sid = $1",
        call_sid,
    )
    if row is None:
        return None
    detail = summary(row)
    counters = detail.pop("usage") or {}
    detail["usage"] = {**counters, "cost_usd": detail["cost_usd"]}
    detail["metrics"] = detail.pop("metrics") or {}
    detail["analysis"] = detail.pop("analysis") or await analysis_state(conn, call_sid)
    detail["cost"] = session_cost(detail.pop("cost_breakdown") or {}, detail["duration_s"])
    detail["transcript"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT seq, role, text, agent, source, interrupted, untranscribed, at, offset_ms, heard_ms, audio_ms,"
            " full_text FROM transcript_lines WHERE call_sid = $1 ORDER BY seq, at, item_id",
            call_sid,
        )
    ]
    detail["turns"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT turn, item_id, offset_ms, received_ms, sent_ms, heard_ms, tool_ms, tools, at FROM call_turns"
            " WHERE call_sid = $1 ORDER BY at, event_id",
            call_sid,
        )
    ]
    detail["latency"] = latency([t["sent_ms"] for t in detail["turns"]],
                                [t["heard_ms"] for t in detail["turns"] if t["heard_ms"] is not None],
                                [t["received_ms"] for t in detail["turns"] if t["received_ms"] is not None])
    detail["tool_calls"] = [
        {**dict(r), "arguments": r["arguments"] if r["arguments"] is not None else r["raw_arguments"]}
        for r in await conn.fetch(
            "SELECT tool_call_id, seq, name, agent, arguments, raw_arguments, ok, result, error, duration_ms, at"
            " FROM tool_calls WHERE call_sid = $1 ORDER BY seq, at, tool_call_id",
            call_sid,
        )
    ]
    detail["status_history"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT status, source, answered_by, detail, at FROM call_status_history"
            " WHERE call_sid = $1 ORDER BY at, event_id",
            call_sid,
        )
    ]
    detail["agents"] = [
        dict(r)
        for r in await conn.fetch(
            "SELECT from_agent, to_agent, at FROM agent_changes WHERE call_sid = $1 ORDER BY at, event_id",
            call_sid,
        )
    ]
    return detail


async def analysis_state(conn: asyncpg.Connection, call_sid: str) -> dict[str, Any] | None:
    """Where the call's post-call analysis stands while it has no result: pending (with the
    attempts so far and the last error) or failed (with the reason); None if none was asked."""
    row = await conn.fetchrow(
        "SELECT status, attempts, reason, model FROM analysis_jobs WHERE call_sid = $1 AND status <> 'done'", call_sid
    )
    return dict(row) if row is not None else None


def percentile(values: list[float], p: float) -> float | None:
    """The ``p`` percentile (0..1) of ``values``, interpolated linearly between the closest ranks
    (PostgreSQL's ``percentile_cont``); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = p * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)


def latency(sent: list[float], heard: list[float], received: list[float] | None = None) -> dict[str, Any]:
    """A call's turn latencies: p50 and p95 of its turns' ms to the model's first audio received,
    to the first audio sent and heard."""
    received = received or []
    return {"turns": len(sent), "received_p50": percentile(received, 0.5), "received_p95": percentile(received, 0.95),
            "sent_p50": percentile(sent, 0.5), "sent_p95": percentile(sent, 0.95),
            "heard_p50": percentile(heard, 0.5), "heard_p95": percentile(heard, 0.95)}


def session_cost(breakdown: dict[str, Any], duration_s: float | None) -> dict[str, Any]:
    """The cost object of a session: the writer's sums by kind (dollars priced by the bridge), their
    total, the cost per minute and what a hosted engine's fee would have added over the duration."""
    usd = {k: float(breakdown.get(f"{k}_usd") or 0) for k in COST_KINDS}
    tokens = {k: int(breakdown.get(f"{k}_tokens") or 0) for k in COST_KINDS}
    total = sum(usd.values())
    minutes = duration_s / 60 if duration_s is not None and duration_s > 0 else None
    fee = round(HOSTED_FEE_USD_PER_MIN * minutes, 6) if minutes else None
    return {
        "usd": usd, "tokens": tokens, "total_usd": total, "duration_s": duration_s,
        "per_minute_usd": total / minutes if minutes else None,
        "hosted_fee_per_minute_usd": HOSTED_FEE_USD_PER_MIN, "hosted_fee_usd": fee,
        "total_with_hosted_fee_usd": total + fee if fee is not None else None,
    }


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
    test_run: str | None = None  # a test call's run (dialtone eval); None for a real call


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
    """One answered turn: the caller stopped speaking -> the model's first audio received at the
    bridge -> first agent audio sent towards Twilio -> heard (ms from the caller's stop)."""

    turn: int
    item_id: str | None
    offset_ms: float | None
    received_ms: float | None = None
    sent_ms: float
    heard_ms: float | None
    tool_ms: float
    tools: int
    at: datetime


class Latency(BaseModel):
    """The call's turn latencies in ms, percentiles over its turns (None without turns)."""

    turns: int = 0
    received_p50: float | None = None
    received_p95: float | None = None
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
    analysis: float = 0  # the post-call analysis (its text model)
    other: float = 0  # usage events of bridges older than the split by kind


class TokenKinds(BaseModel):
    audio_in: int = 0
    audio_out: int = 0
    text_in: int = 0
    text_out: int = 0
    cached: int = 0
    transcription: int = 0
    analysis: int = 0
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
    detail: str | None = None  # moved: "gw-a -> gw-b"; move_failed: why
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
    # What an analysis worker said about the call (its call.analyzed event): with the platform's
    # worker, status "done" with summary, fields, verdict, model, cost_usd, tokens; while there is
    # none, the job's state ("pending" or "failed", attempts, reason); None if none was asked.
    analysis: dict[str, Any] | None = None


def session_json(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` (from :func:`get_session`) as the API serializes it: the JSON types of
    :class:`SessionDetail`, times in ISO 8601."""
    return SessionDetail.model_validate(detail).model_dump(mode="json")
