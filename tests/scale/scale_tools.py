"""The scale test's tools: each execution is recorded in PostgreSQL (one row per run, no unique
key, so a tool call run twice shows as two rows), with the runner that ran it."""

from __future__ import annotations

import os
from typing import Any

from dialtone_tools import ToolContext, tool

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS scale_tool_runs (
    call_id      text NOT NULL,
    tool_call_id text NOT NULL,
    tool         text NOT NULL,
    runner       text NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


async def setup(db: Any) -> None:
    """Create the runs table (every runner at start; serialised, as runners start together)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7482102)")
        await conn.execute(RUNS_TABLE)


async def _record(ctx: ToolContext, name: str) -> str:
    runner = os.environ.get("INSTANCE_ID", "?")
    await ctx.db.execute(
        "INSERT INTO scale_tool_runs (call_id, tool_call_id, tool, runner) VALUES ($1, $2, $3, $4)",
        ctx.call_id, ctx.tool_call_id, name, runner,
    )
    return runner


@tool
async def check_stock(item: str, ctx: ToolContext) -> dict:
    """Whether an item is in stock.

    Args:
        item: what the caller wants, e.g. blue paint.
    """
    return {"item": item, "in_stock": True, "runner": await _record(ctx, "check_stock")}


@tool
async def book_delivery(day: str, ctx: ToolContext) -> dict:
    """Book a delivery of the caller's order.

    Args:
        day: the day of the week, e.g. Friday.
    """
    return {"day": day, "booked": True, "runner": await _record(ctx, "book_delivery")}
