"""``make bench-list``: the call list at scale. Loads N synthetic sessions (default 1,000,000, each
with a four-line transcript) into a scratch PostgreSQL of its own, with the real migrations and
indexes, then times the admin API's own queries (``list_sessions``, ``count_sessions``,
``facet_values``): the first page and three keyset pages after it, per filter and search,
reporting the median and worst page in ms against the 100 ms budget.

The rows are generated inside PostgreSQL (``INSERT ... SELECT`` over ``generate_series``, the
indexes built after the load), which is as fast as COPY and sends nothing over the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from dialtone_admin.sessions import SessionFilter, count_sessions, facet_values, list_sessions
from dialtone_common.db import create_pool
from dialtone_common.embedded import embedded_postgres
from dialtone_writer.migrations import apply_migrations

BUDGET_MS = 100.0
PAGES = 4  # the first page and three after it
REPEAT = 5
T_END = datetime(2026, 1, 1, tzinfo=UTC)

# Words of the synthetic transcripts: ~1,000 common ones, and 'zeppelin' in one call of 10,000.
_LOAD = """
INSERT INTO call_sessions (call_sid, agent, direction, from_number, to_number, status, outcome,
                           started_at, ended_at, end_reason, cost_usd, transcript)
SELECT 'CA' || lpad(to_hex(i), 32, '0'),
       (ARRAY['support', 'sales', 'Reception', 'billing', 'lab'])[1 + i % 5],
       CASE WHEN i % 4 = 0 THEN 'outbound' ELSE 'inbound' END,
       '+1555' || lpad((i % 200000)::text, 7, '0'),
       (ARRAY['+15005550006', '+15005550096', '+15005550099'])[1 + i % 3],
       (ARRAY['completed', 'completed', 'completed', 'busy', 'no-answer', 'failed'])[1 + i % 6],
       (ARRAY['resolved', 'booked', 'Booked', 'transferred', 'voicemail', NULL])[1 + (i / 7) % 6],
       $2::timestamptz - make_interval(secs => i * 30),
       $2::timestamptz - make_interval(secs => i * 30) + make_interval(secs => 30 + i % 300),
       'caller_hangup', (i % 1000) / 10000.0,
       jsonb_build_array(
           jsonb_build_object('seq', 0, 'role', 'agent', 'text', 'Hello, how can I help you today?'),
           jsonb_build_object('seq', 1, 'role', 'caller', 'text',
               'I would like word' || (i % 997) || ' and word' || (i % 991)
               || CASE WHEN i % 10000 = 17 THEN ' about the zeppelin' ELSE '' END),
           jsonb_build_object('seq', 2, 'role', 'agent', 'text', 'Certainly, word' || (i % 983) || ' is available.'),
           jsonb_build_object('seq', 3, 'role', 'caller', 'text', 'Thank you, goodbye.'))
FROM generate_series(1, $1) AS i
"""


async def _load(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'call_sessions'"
            " AND indexname NOT IN ('call_sessions_pkey', 'call_sessions_call_sid_key')"
        )
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        started = time.perf_counter()
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(_LOAD, n, T_END)
        print(f"loaded {n:,} sessions in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for row in indexes:
            await conn.execute(row["indexdef"])
        await conn.execute("VACUUM ANALYZE call_sessions")
        print(f"indexed ({len(indexes)} indexes) and analyzed in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await conn.close()


async def _time_pages(pool: asyncpg.Pool, filters: SessionFilter) -> list[float]:
    times = []
    for _ in range(REPEAT):
        cursor = None
        for _ in range(PAGES):
            async with pool.acquire() as conn:
                started = time.perf_counter()
                _, cursor = await list_sessions(conn, filters, 50, cursor)
                times.append((time.perf_counter() - started) * 1000)
            if cursor is None:
                break
    return times


async def _time(pool: asyncpg.Pool, call) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(REPEAT):
        async with pool.acquire() as conn:
            started = time.perf_counter()
            await call(conn)
            times.append((time.perf_counter() - started) * 1000)
    return times


async def bench(n: int, data_dir: Path) -> int:
    with embedded_postgres(data_dir) as dsn:
        await apply_migrations(dsn)
        await _load(dsn, n)
        pool = await create_pool(dsn)
        day = T_END - timedelta(days=1)
        cases = {
            "all calls": SessionFilter(),
            "agent=reception (any case)": SessionFilter(agent="RECEPTION"),
            "status=failed": SessionFilter(status="failed"),
            "outcome=booked (any case)": SessionFilter(outcome="booked"),
            "direction=outbound": SessionFilter(direction="outbound"),
            "number (one caller)": SessionFilter(number="+15550000123"),
            "one day": SessionFilter(since=day, until=T_END),
            "agent + status + direction": SessionFilter(agent="sales", status="completed", direction="inbound"),
            "search, common word": SessionFilter(q="word42"),
            "search, rare word": SessionFilter(q="zeppelin"),
            "search, two words": SessionFilter(q="word42 word43"),
            "search + agent": SessionFilter(q="word42", agent="support"),
        }
        worst = 0.0
        print(f"\n{'list, 50 a page, 4 pages x ' + str(REPEAT):<40} {'p50 ms':>8} {'max ms':>8}")
        try:
            for name, filters in cases.items():
                times = await _time_pages(pool, filters)
                worst = max(worst, statistics.median(times))
                print(f"{name:<40} {statistics.median(times):8.1f} {max(times):8.1f}", flush=True)
            print(f"\n{'count (exact to 10,000, else estimate)':<40} {'p50 ms':>8} {'max ms':>8}")
            for name in ("all calls", "outcome=booked (any case)", "search, common word", "search, rare word"):
                times = await _time(pool, lambda conn, f=cases[name]: count_sessions(conn, f))
                print(f"{name:<40} {statistics.median(times):8.1f} {max(times):8.1f}", flush=True)
            times = await _time(pool, facet_values)
            print(f"{'filter choices (facets)':<40} {statistics.median(times):8.1f} {max(times):8.1f}")
        finally:
            await pool.close()
        verdict = "within" if worst <= BUDGET_MS else "OVER"
        print(f"\nslowest median list page {worst:.1f} ms: {verdict} the {BUDGET_MS:.0f} ms budget ({n:,} sessions)")
        return 0 if worst <= BUDGET_MS else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dialtone-bench-list-") as tmp:
        raise SystemExit(asyncio.run(bench(args.sessions, Path(tmp))))
