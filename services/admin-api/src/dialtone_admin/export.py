"""CSV and JSON export of the filtered call list, streamed in keyset batches, each batch within the
request deadline of its own, so a large export never holds a connection or a snapshot for long."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from dialtone_admin.database import Database
from dialtone_admin.sessions import SessionFilter, list_sessions

EXPORT_BATCH = 1000
EXPORT_MAX = 1_000_000
COLUMNS = (
    "call_sid", "started_at", "ended_at", "duration_s", "direction", "from_number", "to_number", "agent",
    "status", "outcome", "end_reason", "answered_by", "transferred_to", "cost_usd",
    # The post-call analysis: its state, summary, verdict, the extracted fields (JSON in a CSV cell),
    # the model and what it cost.
    "analysis_status", "analysis_summary", "analysis_success", "analysis_reason", "analysis_fields",
    "analysis_model", "analysis_cost_usd",
)  # fmt: skip


def _flatten(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One exported row: the summary and its analysis in the ``analysis_*`` columns."""
    analysis = row.get("analysis") or {}
    verdict = analysis.get("verdict") or {}
    fields = analysis.get("fields")
    return {
        **row,
        "analysis_status": analysis.get("status"),
        "analysis_summary": analysis.get("summary"),
        "analysis_success": verdict.get("success"),
        "analysis_reason": verdict.get("reason") if verdict else analysis.get("reason"),
        "analysis_fields": orjson.dumps(fields).decode() if fmt == "csv" and fields is not None else fields,
        "analysis_model": analysis.get("model"),
        "analysis_cost_usd": analysis.get("cost_usd"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    # A cell a spreadsheet would read as a formula (caller input can start with = + - @) is quoted.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv(rows: list[dict[str, Any]], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return out.getvalue().encode()


async def export_rows(
    db: Database, filters: SessionFilter, first: list[dict[str, Any]], cursor: str | None, limit: int, fmt: str
) -> AsyncIterator[bytes]:
    """The export's bytes: ``first`` (already read), then the following batches up to ``limit`` rows."""
    sent, batch = 0, first
    if fmt == "json":
        yield b"["
    while True:
        batch = [_flatten(row, fmt) for row in batch[: limit - sent]]
        if fmt == "csv":
            yield _csv(batch, header=sent == 0)
        else:
            for i, row in enumerate(batch):
                yield (b"," if sent + i else b"") + orjson.dumps({c: row.get(c) for c in COLUMNS})
        sent += len(batch)
        if cursor is None or sent >= limit:
            break
        async with db.connection() as conn:
            batch, cursor = await list_sessions(conn, filters, min(EXPORT_BATCH, limit - sent), cursor,
                                                with_analysis=True)
    if fmt == "json":
        yield b"]"
