"""The overview: calls, minutes, cost and outcomes per day, and turn latency p50/p95 per day and
per agent, with days in the operator's timezone."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from dialtone_admin.auth import require_token
from dialtone_admin.database import Database
from dialtone_admin.errors import responses
from dialtone_admin.params import Text, UtcTime

MAX_DAYS = 366
# IANA's zone names ("posixrules", "localtime" are files of the database, not zones PostgreSQL knows).
_ZONES = frozenset(available_timezones()) - {"localtime", "Factory"}

router = APIRouter(dependencies=[Depends(require_token)], tags=["stats"])


class Day(BaseModel):
    day: date
    calls: int
    minutes: float
    cost_usd: float
    outcomes: dict[str, int]
    turns: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class AgentDay(BaseModel):
    day: date
    agent: str
    turns: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class Daily(BaseModel):
    tz: str
    days: list[Day]
    agents: list[AgentDay]


_DAY = "(s.started_at AT TIME ZONE $3)::date"
_LATENCY = f"""
SELECT {_DAY} AS day, {{agent}} count(*) AS turns,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.sent_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY t.sent_ms) AS p95
FROM call_turns t JOIN call_sessions s ON s.call_sid = t.call_sid
WHERE s.started_at >= $1 AND s.started_at < $2{{tests}}
GROUP BY 1{{group}} ORDER BY 1{{group}}
"""


@router.get("/stats/daily", response_model=Daily, responses=responses(401, 503))
async def daily(
    request: Request,
    since: Annotated[UtcTime, Query(description="first instant (ISO 8601), e.g. a local midnight")],
    until: Annotated[UtcTime, Query(description="end, exclusive (ISO 8601)")],
    tz: Annotated[Text, Query(description="IANA timezone the days are counted in, e.g. Europe/Paris")] = "UTC",
    tests: Annotated[
        Literal["exclude", "include"], Query(description="test calls (dialtone eval): left out by default")
    ] = "exclude",
) -> dict[str, Any]:
    """Per day (in ``tz``) of the calls started in [since, until): calls, minutes, cost, outcomes,
    and turn latency (the caller's last word to the reply's first audio sent) p50/p95, overall and
    per agent."""
    try:
        if tz not in _ZONES:  # only IANA's names: a file of the tz database is not always a zone
            raise ZoneInfoNotFoundError(tz)
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise HTTPException(422, detail=[{"loc": ["query", "tz"], "msg": f"unknown timezone {tz!r}", "type": "value_error"}]) from exc
    if not (since < until and until - since <= timedelta(days=MAX_DAYS)):
        raise HTTPException(422, detail=[{"loc": ["query", "until"], "msg": f"must be after since, at most {MAX_DAYS} days later", "type": "value_error"}])
    db: Database = request.app.state.db
    args = (since, until, tz)
    leave_out = " AND s.test_run IS NULL" if tests == "exclude" else ""  # a fixed clause, no input in it
    async with db.connection() as conn:
        totals = await conn.fetch(
            f"SELECT {_DAY} AS day, count(*) AS calls,"
            " coalesce(sum(EXTRACT(EPOCH FROM s.ended_at - s.started_at)), 0)::float8 / 60 AS minutes,"
            " coalesce(sum(s.cost_usd), 0)::float8 AS cost_usd"
            " FROM call_sessions s WHERE s.started_at >= $1 AND s.started_at < $2" + leave_out + " GROUP BY 1",
            *args,
        )
        outcomes = await conn.fetch(
            f"SELECT {_DAY} AS day, coalesce(s.outcome, 'none') AS outcome, count(*) AS n"
            " FROM call_sessions s WHERE s.started_at >= $1 AND s.started_at < $2" + leave_out + " GROUP BY 1, 2",
            *args,
        )
        latency, per_agent = [], []
        if await conn.fetchval("SELECT to_regclass('call_turns') IS NOT NULL"):
            latency = await conn.fetch(_LATENCY.format(agent="", group="", tests=leave_out), *args)
            per_agent = await conn.fetch(_LATENCY.format(agent="coalesce(s.agent, '') AS agent,", group=", 2", tests=leave_out), *args)
    try:
        first = since.astimezone(zone).date()
        last = (until - timedelta(microseconds=1)).astimezone(zone).date()
    except (OverflowError, ValueError) as exc:
        raise HTTPException(422, detail=[{"loc": ["query", "since"], "msg": "out of the calendar in this timezone", "type": "value_error"}]) from exc
    days: dict[date, dict[str, Any]] = {}
    day = first
    while day <= last:
        days[day] = {"day": day, "calls": 0, "minutes": 0.0, "cost_usd": 0.0, "outcomes": {}, "turns": 0,
                     "latency_p50_ms": None, "latency_p95_ms": None}  # fmt: skip
        day += timedelta(days=1)
    for r in totals:
        days.setdefault(r["day"], {**days.get(first, {}), "day": r["day"], "outcomes": {}, "turns": 0,
                                   "latency_p50_ms": None, "latency_p95_ms": None})  # fmt: skip
        days[r["day"]].update(calls=r["calls"], minutes=r["minutes"], cost_usd=r["cost_usd"])
    for r in outcomes:
        if r["day"] in days:
            days[r["day"]]["outcomes"][r["outcome"]] = r["n"]
    for r in latency:
        if r["day"] in days:
            days[r["day"]].update(turns=r["turns"], latency_p50_ms=r["p50"], latency_p95_ms=r["p95"])
    agents = [
        {"day": r["day"], "agent": r["agent"], "turns": r["turns"], "latency_p50_ms": r["p50"], "latency_p95_ms": r["p95"]}
        for r in per_agent
    ]
    return {"tz": tz, "days": [days[d] for d in sorted(days)], "agents": agents}


