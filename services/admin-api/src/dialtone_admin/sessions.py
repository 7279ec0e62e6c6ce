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
from dialtone_common.session_view import (  # noqa: F401 - the read model of one session, re-exported
    COST_KINDS,
    HOSTED_FEE_USD_PER_MIN,
    SUMMARY_COLUMNS,
    get_session,
    latency,
    percentile,
    session_cost,
    summary,
)

from dialtone_admin.cursor import decode_cursor, encode_cursor

# The same expression as the index call_sessions_transcript_fts_idx (migration dashboard_filters), so the index
# serves the search: one GIN lookup over whole calls, newest first.
# The analysis summary is searched too, through its own index (call_sessions_summary_fts_idx, migration
# analysis): the planner ORs the two GIN lookups.
_SEARCH = (
    "(to_tsvector('simple', dialtone_transcript_text(s.transcript)) @@ websearch_to_tsquery('simple', {0})"
    " OR to_tsvector('simple', coalesce(s.analysis ->> 'summary', '')) @@ websearch_to_tsquery('simple', {0}))"
)
# verdict=success|failure: the analysis' verdict (call_sessions_verdict_idx).
VERDICTS = {"success": "true", "failure": "false"}
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
    q: str | None = None  # full-text search over transcript lines and analysis summaries
    verdict: str | None = None  # "success" or "failure": the post-call analysis' verdict
    test: str | None = None  # "exclude" or "only": test calls (dialtone eval); None: every call


def _aware(value: datetime | None) -> datetime | None:
    """Dates without a zone are taken as UTC rather than the server's local time."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


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
    if filters.verdict is not None and filters.verdict in VERDICTS:
        where.append(f"s.analysis IS NOT NULL AND (s.analysis -> 'verdict' ->> 'success') = {param(VERDICTS[filters.verdict])}")
    if filters.test == "exclude":
        where.append("s.test_run IS NULL")
    elif filters.test == "only":
        where.append("s.test_run IS NOT NULL")
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
    conn: asyncpg.Connection | asyncpg.Pool, filters: SessionFilter, limit: int, cursor: str | None,
    *, with_analysis: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of sessions, newest first.

    Args:
        conn: a connection or pool.
        filters: what to select.
        limit: the page size.
        cursor: ``next_cursor`` of the previous page, or None for the first page.
        with_analysis: each summary has its ``analysis`` too (the export).

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
        f"SELECT {SUMMARY_COLUMNS}{', s.analysis' if with_analysis else ''} FROM call_sessions s"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY s.started_at DESC, s.id DESC LIMIT {param(limit + 1)}"
    )
    rows = await conn.fetch(sql, *args)
    # One row more than asked tells whether another page exists without a count query.
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["started_at"], page[-1]["id"]) if more and page else None
    return [summary(r) for r in page], next_cursor
