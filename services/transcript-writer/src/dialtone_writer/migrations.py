"""The writer owns the call schema: forward-only numbered SQL files in ``migrations/``."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from dialtone_common.db import migrate

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


async def apply_migrations(dsn: str) -> list[int]:
    """Apply every pending migration to the database at ``dsn``.

    Args:
        dsn: PostgreSQL connection string.

    Returns:
        The numbers of the migrations applied now (empty when the schema was up to date).
    """
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, MIGRATIONS_DIR)
    finally:
        await conn.close()
