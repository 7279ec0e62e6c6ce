"""PostgreSQL: one asyncpg pool per service, jsonb as Python objects via orjson, and the
forward-only migration runner."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg
import orjson

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float | None = 30.0,
    connect_timeout: float = 5.0,
) -> asyncpg.Pool:
    """Open a pool whose connections encode and decode jsonb with orjson.

    Both timeouts are there so that a frozen or unreachable server turns into an error instead of
    a wait without end (asyncpg's own defaults are no command timeout and a 60 s connect).

    Args:
        dsn: the PostgreSQL URL.
        min_size: connections opened up front.
        max_size: connections at most.
        command_timeout: seconds a query may take unless the call passes its own ``timeout``.
        connect_timeout: seconds to open a connection, the server's startup reply included.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=command_timeout,
        timeout=connect_timeout,
    )


_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files(directory: Path) -> list[tuple[int, Path]]:
    """The numbered ``NNNN_name.sql`` files, in order; gaps or duplicates are an error."""
    found = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _MIGRATION.match(p.name))
    )
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations in {directory} must be numbered 0001.. without gaps: {numbers}")
    return found


async def migrate(conn: asyncpg.Connection, directory: Path) -> list[int]:
    """Apply pending migrations, each in its own transaction, under an advisory lock so that
    several writers starting at once apply each migration exactly once. Returns what it applied."""
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock(7482001)")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number, path in migration_files(directory):
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, path.name
                )
            log.info("applied migration %s", path.name)
            applied.append(number)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(7482001)")
    return applied
