"""Writing call events to PostgreSQL: one transaction per batch, each event applied at most once.

``write_events`` first records every event in the ``call_events`` ledger with
``ON CONFLICT (event_id) DO NOTHING``; only the events that were actually inserted have their
effect applied. A redelivered or republished event therefore changes nothing, and because the
ledger row and the effect commit together, a crash between them cannot half-apply an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from dialtone_proto import (
    AgentChanged,
    CallAnalyzed,
    CallEnded,
    CallMetric,
    CallStarted,
    CallStatus,
    CallTransferred,
    Event,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    TurnMeasured,
    UsageReported,
    encode_event,
)

from dialtone_writer.mapping import RANK_IMPLIED_BY_END, cost_breakdown, status_rank, usage_counters

if TYPE_CHECKING:
    from dialtone_writer.redaction import Redactor
    from dialtone_writer.webhooks import Outbox


@dataclass(slots=True)
class BatchResult:
    """What one ``write_events`` call did."""

    applied: list[Event] = field(default_factory=list)
    duplicates: int = 0
    webhooks: int = 0  # webhook deliveries enqueued (the outbox)


# The payload goes in as text and is cast in SQL because asyncpg's jsonb codec does not cover
# jsonb[] parameters; the ledger insert is one statement for the whole batch.
_LEDGER = """
INSERT INTO call_events (event_id, call_sid, type, at, payload)
SELECT e.id, e.call_sid, e.type, e.at, e.payload::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
     AS e(id, call_sid, type, at, payload)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# Every event upserts its session: events arrive in any order, a transcript line may beat
# call.started. Rows are locked in call_sid order so concurrent writers cannot deadlock.
_ENSURE_SESSIONS = """
INSERT INTO call_sessions (call_sid, started_at)
SELECT s.call_sid, s.at FROM unnest($1::text[], $2::timestamptz[]) AS s(call_sid, at)
ORDER BY s.call_sid
ON CONFLICT (call_sid) DO UPDATE
SET started_at = LEAST(call_sessions.started_at, EXCLUDED.started_at), updated_at = now()
"""

# The variable that marks a test call, its value the test run (docs/CONTRACTS.md, Test calls).
TEST_RUN_VARIABLE = "dialtone_eval"

_STARTED = """
UPDATE call_sessions
SET agent = $2, direction = $3, from_number = COALESCE($4, from_number),
    to_number = COALESCE($5, to_number), stream_sid = COALESCE($6, stream_sid),
    test_run = COALESCE($7, test_run), updated_at = now()
WHERE call_sid = $1
"""

# One row per item: the line of the highest (rev, at) wins, so a barge-in's correction holds
# whatever order the two publications are applied in (redelivery, several writers).
_LINE = """
INSERT INTO transcript_lines (call_sid, seq, item_id, role, text, agent, source, interrupted, at, event_id,
                              untranscribed, rev, offset_ms, heard_ms, audio_ms, full_text, redacted)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT (call_sid, item_id) DO UPDATE
SET seq = EXCLUDED.seq, role = EXCLUDED.role, text = EXCLUDED.text, agent = EXCLUDED.agent,
    source = EXCLUDED.source, interrupted = EXCLUDED.interrupted, at = EXCLUDED.at,
    event_id = EXCLUDED.event_id, untranscribed = EXCLUDED.untranscribed, rev = EXCLUDED.rev,
    offset_ms = EXCLUDED.offset_ms, heard_ms = EXCLUDED.heard_ms, audio_ms = EXCLUDED.audio_ms,
    full_text = EXCLUDED.full_text, redacted = EXCLUDED.redacted
WHERE (transcript_lines.rev, transcript_lines.at) <= (EXCLUDED.rev, EXCLUDED.at)
"""

_TURN = """
INSERT INTO call_turns (event_id, call_sid, turn, item_id, offset_ms, sent_ms, heard_ms, tool_ms, tools, at,
                        received_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (event_id) DO NOTHING
"""

_TOOL = """
INSERT INTO tool_calls (call_sid, tool_call_id, seq, name, agent, arguments, raw_arguments, ok, result,
                        error, duration_ms, at, event_id)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb, $10, $11, $12, $13)
ON CONFLICT (call_sid, tool_call_id) DO NOTHING
"""

_USAGE = """
INSERT INTO call_usage (event_id, call_sid, source, ref, model, usage, counters, cost_usd, at, breakdown)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10::jsonb)
ON CONFLICT (event_id) DO NOTHING
"""

_OUTCOME = """
UPDATE call_sessions SET outcome = $2, outcome_detail = $3, outcome_at = $4, updated_at = now()
WHERE call_sid = $1 AND (outcome_at IS NULL OR outcome_at <= $4)
"""

_STATUS_HISTORY = """
INSERT INTO call_status_history (event_id, call_sid, status, source, answered_by, sequence, duration_s, at, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id) DO NOTHING
"""

# The greatest (rank, at) wins, the same rule as mapping.status_wins: order-independent.
_STATUS = """
UPDATE call_sessions SET status = $2, status_rank = $3, status_at = $4, updated_at = now()
WHERE call_sid = $1 AND (status_rank, COALESCE(status_at, '-infinity')) <= ($3::smallint, $4::timestamptz)
"""

_STATUS_DETAILS = """
UPDATE call_sessions SET answered_by = COALESCE($2, answered_by), direction = COALESCE(direction, $3)
WHERE call_sid = $1
"""

_TRANSFERRED = "UPDATE call_sessions SET transferred_to = $2, updated_at = now() WHERE call_sid = $1"

_AGENT_CHANGED = """
INSERT INTO agent_changes (event_id, call_sid, from_agent, to_agent, at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (event_id) DO NOTHING
"""

_METRIC = """
UPDATE call_sessions SET metrics = metrics || jsonb_build_object($2::text, $3::float8), updated_at = now()
WHERE call_sid = $1
"""

# The earliest call.ended wins (a second one, e.g. from a sweeper, does not move the end).
_ENDED = """
UPDATE call_sessions
SET end_reason = CASE WHEN ended_at IS NULL OR $2 < ended_at THEN $3 ELSE end_reason END,
    ended_at = LEAST(ended_at, $2), updated_at = now()
WHERE call_sid = $1
"""

# The latest analysis wins, whatever order two of them are applied in.
_ANALYZED = """
UPDATE call_sessions SET analysis = $2, analysis_at = $3, updated_at = now()
WHERE call_sid = $1 AND (analysis_at IS NULL OR analysis_at <= $3)
"""

# Recomputed once per batch and call rather than once per line.
_REFRESH_TRANSCRIPTS = """
UPDATE call_sessions s
SET transcript = COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
                   'seq', l.seq, 'role', l.role, 'text', l.text, 'agent', l.agent,
                   'source', l.source, 'interrupted', l.interrupted, 'untranscribed', l.untranscribed,
                   'at', l.at, 'offset_ms', l.offset_ms, 'heard_ms', l.heard_ms, 'audio_ms', l.audio_ms,
                   'full_text', l.full_text)
               ORDER BY l.seq, l.at, l.item_id)
        FROM transcript_lines l WHERE l.call_sid = s.call_sid), '[]'::jsonb),
    updated_at = now()
WHERE s.call_sid = ANY($1::text[])
"""

_REFRESH_USAGE = """
UPDATE call_sessions s
SET usage = COALESCE((
        SELECT jsonb_object_agg(c.key, c.total) FROM (
            SELECT kv.key, sum(kv.value::numeric) AS total
            FROM call_usage u, jsonb_each_text(u.counters) AS kv
            WHERE u.call_sid = s.call_sid GROUP BY kv.key) c), '{}'::jsonb),
    cost_usd = COALESCE((SELECT sum(u.cost_usd) FROM call_usage u WHERE u.call_sid = s.call_sid), 0),
    cost_breakdown = COALESCE((
        SELECT jsonb_object_agg(c.key, c.total) FROM (
            SELECT kv.key, sum(kv.value::numeric) AS total
            FROM call_usage u, jsonb_each_text(u.breakdown) AS kv
            WHERE u.call_sid = s.call_sid GROUP BY kv.key) c), '{}'::jsonb),
    updated_at = now()
WHERE s.call_sid = ANY($1::text[])
"""


_AGENTS = "SELECT call_sid, agent FROM call_sessions WHERE call_sid = ANY($1::text[]) AND agent IS NOT NULL"


async def redact_events(
    conn: asyncpg.Connection, events: Sequence[Event], redactor: Redactor
) -> tuple[list[Event], dict[str, list[str]]]:
    """The events as they may be stored (``redaction.py``), personal data replaced by placeholders,
    and the kinds taken out of each transcript line, by event id (kept on its row for the
    recorder). The agent of events that do not name one comes from the batch's ``call.started`` or
    the session. The matching runs in a thread: the recorder shares this event loop."""
    agents = {e.call_id: e.agent for e in events if isinstance(e, CallStarted)}
    missing = sorted({e.call_id for e in events if isinstance(e, CallAnalyzed | OutcomeSet)} - set(agents))
    if missing:
        agents |= {r["call_sid"]: r["agent"] for r in await conn.fetch(_AGENTS, missing)}

    def redact_all() -> tuple[list[Event], dict[str, list[str]]]:
        out: list[Event] = []
        kinds: dict[str, list[str]] = {}
        for event in events:
            clean, found = redactor.redact_event(event, agents.get(event.call_id))
            if found and isinstance(clean, TranscriptLine):
                kinds[clean.id] = sorted(found)
            out.append(clean)
        return out, kinds

    return await asyncio.to_thread(redact_all)


async def write_events(
    conn: asyncpg.Connection, events: Sequence[Event], outbox: Outbox | None = None, redactor: Redactor | None = None
) -> BatchResult:
    """Apply a batch of events in one transaction.

    Args:
        conn: a connection whose jsonb codec takes Python objects (``dialtone_common.db.create_pool``).
        events: decoded events in delivery order; the same event id may appear more than once.
        outbox: where the webhook deliveries of the events applied now are enqueued, in the same
            transaction (so ``call.ended`` is sent only once its session row is committed).
        redactor: personal data is replaced before anything is written (None: stored as published).

    Returns:
        The events applied now and how many were already recorded (duplicates).

    Raises:
        asyncpg.PostgresError, OSError: nothing was committed; the caller must not acknowledge.
    """
    redacted: dict[str, list[str]] = {}
    if redactor is not None:
        events, redacted = await redact_events(conn, events, redactor)
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.id, event)
    result = BatchResult(duplicates=len(events) - len(unique))
    if not unique:
        return result
    batch = list(unique.values())
    async with conn.transaction():
        rows = await conn.fetch(
            _LEDGER,
            [e.id for e in batch],
            [e.call_id for e in batch],
            [e.type for e in batch],
            [e.at for e in batch],
            [encode_event(e).decode() for e in batch],
        )
        inserted = {r["event_id"] for r in rows}
        result.applied = [e for e in batch if e.id in inserted]
        result.duplicates += len(batch) - len(result.applied)
        if not result.applied:
            return result
        first_seen: dict[str, datetime] = {}
        for e in result.applied:
            first_seen[e.call_id] = min(first_seen.get(e.call_id, e.at), e.at)
        calls = sorted(first_seen)
        await conn.execute(_ENSURE_SESSIONS, calls, [first_seen[c] for c in calls])
        for event in result.applied:
            await _apply(conn, event, redacted)
        lines = sorted({e.call_id for e in result.applied if isinstance(e, TranscriptLine)})
        if lines:
            await conn.execute(_REFRESH_TRANSCRIPTS, lines)
        usage = sorted({e.call_id for e in result.applied if isinstance(e, UsageReported | CallAnalyzed)})
        if usage:
            await conn.execute(_REFRESH_USAGE, usage)
        if outbox is not None:
            result.webhooks = await outbox.enqueue(conn, result.applied)
    return result


async def _apply(conn: asyncpg.Connection, e: Event, redacted: dict[str, list[str]]) -> None:
    """Apply one new event's effect; the session row already exists."""
    match e:
        case CallStarted():
            await conn.execute(_STARTED, e.call_id, e.agent, e.direction, e.from_number, e.to_number, e.stream_sid,
                               e.variables.get(TEST_RUN_VARIABLE))  # a test call's run (dialtone eval)
        case TranscriptLine():
            await conn.execute(
                _LINE, e.call_id, e.seq, e.item_id, e.role, e.text, e.agent, e.source, e.interrupted, e.at, e.id,
                e.untranscribed, e.rev, e.offset_ms, e.heard_ms, e.audio_ms, e.full_text, redacted.get(e.id),
            )
        case ToolCalled():
            await conn.execute(
                _TOOL, e.call_id, e.tool_call_id, e.seq, e.name, e.agent, e.arguments, e.raw_arguments,
                e.ok, e.result, e.error, e.duration_ms, e.at, e.id,
            )
        case UsageReported():
            await conn.execute(
                _USAGE, e.id, e.call_id, e.source, e.ref, e.model, {"tokens": e.tokens, "seconds": e.seconds},
                usage_counters(e.source, e.tokens), e.cost_usd, e.at,
                cost_breakdown(e.source, e.tokens, e.costs, e.cost_usd),
            )
        case TurnMeasured():
            await conn.execute(
                _TURN, e.id, e.call_id, e.turn, e.item_id, e.offset_ms, e.sent_ms, e.heard_ms, e.tool_ms, e.tools,
                e.at, e.received_ms,
            )
        case OutcomeSet():
            await conn.execute(_OUTCOME, e.call_id, e.outcome, e.detail, e.at)
        case CallStatus():
            await conn.execute(
                _STATUS_HISTORY, e.id, e.call_id, e.status, e.source, e.answered_by, e.sequence, e.duration_s, e.at,
                e.detail,
            )
            await conn.execute(_STATUS, e.call_id, e.status, status_rank(e.status), e.at)
            await conn.execute(_STATUS_DETAILS, e.call_id, e.answered_by, e.direction)
        case CallTransferred():
            await conn.execute(_TRANSFERRED, e.call_id, e.target)
        case AgentChanged():
            await conn.execute(_AGENT_CHANGED, e.id, e.call_id, e.from_agent, e.to_agent, e.at)
        case CallMetric():
            await conn.execute(_METRIC, e.call_id, e.name, e.value)
        case CallAnalyzed():
            await conn.execute(_ANALYZED, e.call_id, e.analysis, e.at)
            # What the analysis cost joins the call's cost, as the kind "analysis".
            await conn.execute(
                _USAGE, e.id, e.call_id, "analysis", "analysis", e.model or "", {"tokens": e.tokens},
                {}, e.cost_usd, e.at, {"analysis_usd": e.cost_usd, "analysis_tokens": sum(e.tokens.get(k, 0)
                                                                                        for k in ("input", "output"))},
            )
        case CallEnded():
            await conn.execute(_ENDED, e.call_id, e.at, e.reason)
            await conn.execute(_STATUS, e.call_id, "completed", RANK_IMPLIED_BY_END, e.at)
