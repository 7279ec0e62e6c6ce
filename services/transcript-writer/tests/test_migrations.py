"""The schema test: applying every migration gives the expected schema; re-running applies nothing."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from dialtone_writer.migrations import MIGRATIONS_DIR, apply_migrations

pytestmark = pytest.mark.integration

EXPECTED_COLUMNS = {
    "call_sessions": {
        "id", "call_sid", "agent", "direction", "from_number", "to_number", "stream_sid", "started_at",
        "ended_at", "end_reason", "status", "status_rank", "status_at", "answered_by", "outcome",
        "outcome_detail", "outcome_at", "transferred_to", "transcript", "usage", "cost_usd", "metrics",
        "created_at", "updated_at", "cost_breakdown", "analysis", "analysis_at", "test_run",
    },
    "call_events": {"event_id", "call_sid", "type", "at", "payload", "received_at"},
    "transcript_lines": {
        "call_sid", "seq", "item_id", "role", "text", "agent", "source", "interrupted", "at", "event_id",
        "untranscribed", "rev", "offset_ms", "heard_ms", "audio_ms", "full_text", "redacted",
    },
    "tool_calls": {
        "call_sid", "tool_call_id", "seq", "name", "agent", "arguments", "raw_arguments", "ok", "result",
        "error", "duration_ms", "at", "event_id",
    },
    "call_usage": {
        "event_id", "call_sid", "source", "ref", "model", "usage", "counters", "cost_usd", "at", "breakdown",
    },
    "call_turns": {
        "event_id", "call_sid", "turn", "item_id", "offset_ms", "sent_ms", "heard_ms", "tool_ms", "tools", "at",
        "received_ms",
    },
    "call_status_history": {
        "event_id", "call_sid", "status", "source", "answered_by", "sequence", "duration_s", "at", "detail",
    },
    "agent_changes": {"event_id", "call_sid", "from_agent", "to_agent", "at"},
    "call_recordings": {
        "call_sid", "storage_key", "bytes", "duration_ms", "sample_rate", "channels", "complete", "reason",
        "bucket_samples", "peaks", "recorded_by", "created_at",
    },
    "schema_migrations": {"version", "name", "applied_at"},
    "webhook_deliveries": {
        "id", "seq", "endpoint", "url", "event_id", "event_type", "call_sid", "event_at", "created_at", "status",
        "attempts", "next_attempt_at", "retry_from", "locked_until", "payload", "delivered_at", "last_status",
        "last_error",
    },
    "audit_log": {"id", "at", "actor_kind", "actor", "action", "call_sid", "detail", "client", "user_agent"},
    "webhook_attempts": {"delivery_id", "n", "at", "status_code", "latency_ms", "response", "error"},
    "eval_runs": {
        "run_id", "status", "agent", "scenario", "runs", "total", "done", "passed", "simulated", "error",
        "requested_by", "created_at", "finished_at",
    },
    "eval_results": {
        "run_id", "scenario", "engine", "run", "call_sid", "passed", "error", "checks", "seconds", "at",
    },
    "analysis_jobs": {
        "call_sid", "agent", "status", "attempts", "reason", "model", "cost_usd", "tokens", "result", "latency_ms",
        "created_at", "updated_at", "finished_at",
    },
}

EXPECTED_INDEXES = {
    "call_sessions_started_idx",
    "call_sessions_outcome_started_idx",
    "call_sessions_status_started_idx",
    "call_sessions_agent_started_idx",
    "call_sessions_open_idx",
    "call_sessions_call_sid_key",
    "transcript_lines_call_sid_item_id_key",
    "transcript_lines_call_seq_idx",
    "transcript_lines_text_fts_idx",
    "tool_calls_call_seq_idx",
    "call_events_call_idx",
    "call_usage_call_idx",
    "call_status_history_call_idx",
    "agent_changes_call_idx",
    "call_turns_call_idx",
    "call_recordings_created_idx",
    "webhook_deliveries_due_idx",
    "webhook_deliveries_order_idx",
    "webhook_deliveries_list_idx",
    "analysis_jobs_open_idx",
    "call_sessions_verdict_idx",
    "call_sessions_summary_fts_idx",
    "audit_log_at_idx",
    "audit_log_call_idx",
    "call_sessions_test_run_idx",
    "eval_runs_created_idx",
    "eval_results_scenario_idx",
    "eval_runs_pkey",
    "eval_results_pkey",
}


@pytest.fixture
async def fresh_database(database_url: str):
    """An empty database on the test server, dropped afterwards."""
    name = f"writer_migration_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_applying_all_migrations_gives_the_expected_schema(fresh_database: str) -> None:
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    assert await apply_migrations(fresh_database) == list(range(1, len(files) + 1))

    conn = await asyncpg.connect(fresh_database)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
        columns: dict[str, set[str]] = {}
        for r in rows:
            columns.setdefault(r["table_name"], set()).add(r["column_name"])
        assert columns == EXPECTED_COLUMNS
        indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        assert EXPECTED_INDEXES <= indexes
        # Full-text search must not depend on an extension that a managed server may lack.
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'") == 0
    finally:
        await conn.close()

    assert await apply_migrations(fresh_database) == []


async def test_session_database_is_up_to_date(database_url: str) -> None:
    assert await apply_migrations(database_url) == []


def test_migration_files_ship_inside_the_package() -> None:
    # The wheel includes everything under src/dialtone_writer, so the SQL travels with the code.
    assert MIGRATIONS_DIR.parent.name == "dialtone_writer"
    assert (MIGRATIONS_DIR / "0001_init.sql").is_file()
