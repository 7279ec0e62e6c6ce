"""Retention of the operational records that grow with every call: webhook deliveries and the
audit log. (Recordings have their own sweep, in ``recorder.py``; sessions are kept.)

Every ``RETENTION_SWEEP_INTERVAL_S`` a writer deletes, in batches,

- webhook deliveries older than ``WEBHOOK_DELIVERIES_RETENTION_DAYS``, counted from their last
  activity (created, resent or replayed, delivered), with their attempts; a delivery still pending
  is never deleted, however old, since it is still owed to its endpoint;
- audit log entries older than ``AUDIT_RETENTION_DAYS``.

0 keeps them forever. ``FOR UPDATE SKIP LOCKED``: writers sweeping at once never collide, and a
delivery being sent right now (locked by its deliverer) is left for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Counter

from dialtone_writer.metrics import REGISTRY
from dialtone_writer.settings import WriterSettings

log = logging.getLogger(__name__)

DELETED = Counter(
    "dialtone_writer_retention_deleted_total", "Rows deleted by the retention sweep", ["kind"], registry=REGISTRY
)
BATCH = 1000

_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status <> 'pending'
      AND GREATEST(created_at, retry_from, COALESCE(delivered_at, created_at)) < now() - make_interval(days => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED)
"""

_AUDIT = """
DELETE FROM audit_log WHERE id IN (
    SELECT id FROM audit_log WHERE at < now() - make_interval(days => $1)
    ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""


async def sweep_once(pool: asyncpg.Pool, settings: WriterSettings) -> dict[str, int]:
    """Delete what is past its retention now; the rows deleted, by kind."""
    done: dict[str, int] = {}
    for kind, sql, days in (("webhook_deliveries", _DELIVERIES, settings.webhook_deliveries_retention_days),
                            ("audit_log", _AUDIT, settings.audit_retention_days)):
        done[kind] = 0
        if days <= 0:
            continue
        while True:
            async with pool.acquire() as conn:
                status = await conn.execute(sql, days, BATCH)
            n = int(status.split()[-1])
            done[kind] += n
            DELETED.labels(kind).inc(n)
            if n < BATCH:
                break
        if done[kind]:
            log.info("retention: deleted %d %s older than %d days", done[kind], kind.replace("_", " "), days)
    return done


async def run(pool: asyncpg.Pool, settings: WriterSettings, stop: asyncio.Event) -> None:
    """Sweep at start and every ``retention_sweep_interval_s`` until ``stop``; a failed round is
    logged and tried again at the next."""
    while not stop.is_set():
        try:
            await sweep_once(pool, settings)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("retention sweep failed, retrying in %.0f s: %s: %s",
                        settings.retention_sweep_interval_s, type(exc).__name__, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.retention_sweep_interval_s)
