"""Reading call sessions from PostgreSQL (the tables the transcript-writer fills).

Every query is parameterized: filters add fixed SQL fragments with ``$n`` placeholders, never
user text, so each combination of filters still gets an index-friendly plan.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from dialtone_admin.cursor import decode_cursor, encode_cursor

# What a hosted voice-agent engine charges per minute on top of the model: the admin API shows what
# it would have added to each call (cost.hosted_fee_usd), next to the call's own cost per minute.
HOSTED_FEE_USD_PER_MIN = 0.09
# The kinds of the cost breakdown (the writer's mapping.COST_KINDS).
COST_KINDS = ("audio_in", "audio_out", "text_in", "text_out", "cached", "transcription", "other")

_SUMMARY_COLUMNS = """
    s.id, s.call_sid, s.agent, s.direction, s.from_number, s.to_number, s.status, s.outcome,
    s.started_at, s.ended_at, EXTRACT(EPOCH FROM s.ended_at - s.started_at)::float8 AS duration_s,
    s.end_reason, s.cost_usd::float8 AS cost_usd, s.transferred_to, s.answered_by
"""

# The same expression as the index call_sessions_transcript_fts_idx (migration dashboard_filters), so the index
# serves the search: one GIN lookup over whole calls, newest first.
_SEARCH = "to_tsvector('simple', dialtone_transcript_text(s.transcript)) @@ websearch_to_tsquery('simple', {})"
# Exact counts stop here; past it the count is the planner's estimate, said to be one.
COUNT_EXACT_UP_TO = 10_000
# The choices offered for each filter, read by a skip scan over the filter's index.
FACETS = ("agent", "status", "direction", "outcome")
MAX_FACET_VALUES = 200

# websearch_to_tsquery reads a '-' before a word as NOT, and some 33 of them in a row overflow its
# operator stack (an internal error, "tsquery stack too small"). Nobody types more than a few.
MAX_NEGATIONS = 5
_NEGATION = re.compile(r"(?<!\w)-")  # a '-' that starts a word; inside one ("e-mail") it joins


def search_text(q: str) -> str:
    """``q`` for websearch_to_tsquery, with any '-' past the first ``MAX_NEGATIONS`` read as a space."""
    seen = itertools.count(1)
    return _NEGATION.sub(lambda m: "-" if next(seen) <= MAX_NEGATIONS else " ", q)


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Filters of ``GET /sessions``; ``None`` means "any"."""

    outcome: str | None = None  # these four match case-insensitively
    status: str | None = None
    agent: str | None = None
    direction: str | None = None
    number: str | None = None  # the caller's or the called number, exactly
    since: datetime | None = None  # inclusive, on started_at
    until: datetime | None = None  # exclusive, on started_at
    q: str | None = None  # full-text search over transcript lines


def _aware(value: datetime | None) -> datetime | None:
    """Dates without a zone are taken as UTC rather than the server's local time."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out.pop("id", None)
    return out


def _where(filters: SessionFilter) -> tuple[list[str], list[Any]]:
    """The WHERE conditions of ``filters`` and their arguments ($1, $2, ...)."""
    where: list[str] = []
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column in FACETS:
        if (value := getattr(filters, column)) is not None and value != "":
            where.append(f"lower(s.{column}) = lower({param(value)})")
    if filters.number is not None and filters.number.strip():
        number = param(filters.number.strip())
        where.append(f"(s.from_number = {number} OR s.to_number = {number})")
    if filters.since is not None:
        where.append(f"s.started_at >= {param(_aware(filters.since))}")
    if filters.until is not None:
        where.append(f"s.started_at < {param(_aware(filters.until))}")
    if filters.q is not None and filters.q.strip():
        where.append(_SEARCH.format(param(search_text(filters.q.strip()))))
    return where, args


async def count_sessions(conn: asyncpg.Connection, filters: SessionFilter) -> tuple[int, bool]:
    """How many sessions match: exact up to ``COUNT_EXACT_UP_TO``, else the planner's estimate.

    Returns:
        The count and whether it is exact.
    """
    where, args = _where(filters)
    clause = " WHERE " + " AND ".join(where) if where else ""
    exact = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM call_sessions s{clause} LIMIT {COUNT_EXACT_UP_TO + 1}) x", *args
    )
    if exact <= COUNT_EXACT_UP_TO:
        return exact, True
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM call_sessions s{clause}", *args)
    plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
    return max(int(plan[0]["Plan"]["Plan Rows"]), COUNT_EXACT_UP_TO + 1), False


async def facet_values(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """The distinct values of each filterable column, from the data (a skip scan of its index:
    one index probe per distinct value, however many sessions there are)."""
    out: dict[str, list[str]] = {}
    for column in FACETS:
        rows = await conn.fetch(
            f"""
            WITH RECURSIVE t(v, n) AS (
                (SELECT {column}, 1 FROM call_sessions WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
                UNION ALL
                SELECT (SELECT {column} FROM call_sessions WHERE {column} > t.v ORDER BY {column} LIMIT 1), t.n + 1
                FROM t WHERE t.v IS NOT NULL AND t.n < {MAX_FACET_VALUES}
            )
            SELECT v FROM t WHERE v IS NOT NULL
            """
        )
        out[column] = [r["v"] for r in rows]
    return out


async def list_sessions(
    conn: asyncpg.Connection | asyncpg.Pool, filters: SessionFilter, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of sessions, newest first.

    Args:
        conn: a connection or pool.
        filters: what to select.
        limit: the page size.
        cursor: ``next_cursor`` of the previous page, or None for the first page.

    Returns:
        The page's summaries and the cursor of the next page (None on the last page).

    Raises:
        InvalidCursor: the cursor was not made by this API.
    """
    where, args = _where(filters)

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if cursor is not None:
        started_at, row_id = decode_cursor(cursor)
        where.append(f"(s.started_at, s.id) < ({param(started_at)}::timestamptz, {param(row_id)}::bigint)")
    sql = (
        f"SELECT {_SUMMARY_COLUMNS} FROM call_sessions s"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY s.started_at DESC, s.id DESC LIMIT {param(limit + 1)}"
    )
    rows = await conn.fetch(sql, *args)
    # One row more than asked tells whether another page exists without a count query.
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["started_at"], page[-1]["id"]) if more and page else None
    return [_summary(r) for r in page], next_cursor


async def get_session(conn: asyncpg.Connection, call_sid: str) -> dict[str, Any] | None:
    """Everything about one call, or None if it is unknown.

    Args:
        conn: a connection from a pool made by ``dialtone_common.db.create_pool`` (jsonb codec).
        call_sid: the call id.
    """
    row = await conn.fetchrow(
        f"SELECT {_SUMMARY_COLUMNS}, s.usage, s.metrics, s.cost_breakdown FROM call_sessions s WHERE s.call_sid = $1",
        call_sid,
    )
    if row is None:
        return None
    detail = _summary(row)
    counters = detail.pop("usage") or {}
    detail["usage"] = {**counters, "cost_usd": detail["cost_usd"]}
    detail["metrics"] = detail.pop("metrics") or {}
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
            "SELECT turn, item_id, offset_ms, sent_ms, heard_ms, tool_ms, tools, at FROM call_turns"
            " WHERE call_sid = $1 ORDER BY at, event_id",
            call_sid,
        )
    ]
    detail["latency"] = latency([t["sent_ms"] for t in detail["turns"]],
                                [t["heard_ms"] for t in detail["turns"] if t["heard_ms"] is not None])
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
            "SELECT status, source, answered_by, at FROM call_status_history"
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


def latency(sent: list[float], heard: list[float]) -> dict[str, Any]:
    """A call's turn latencies: p50 and p95 of its turns' ms to the first audio sent and heard."""
    return {"turns": len(sent), "sent_p50": percentile(sent, 0.5), "sent_p95": percentile(sent, 0.95),
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
