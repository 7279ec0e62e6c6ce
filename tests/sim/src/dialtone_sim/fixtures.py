"""Pytest fixtures shared by every tier: real NATS with JetStream and real PostgreSQL.

With ``NATS_URL`` / ``DATABASE_URL`` set, the tests use those servers (a fresh database is created
on the PostgreSQL server for the session and dropped afterwards); otherwise they start embedded
servers, exactly as ``make run`` does on a fresh machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from dialtone_common.embedded import embedded_nats, embedded_postgres


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dialtone-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def nats_url(tmp_root: Path) -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    with embedded_nats(tmp_root / "nats") as url:
        yield url


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(tmp_root: Path) -> Iterator[str]:
    """A database of this test session's own, with every migration applied."""
    from dialtone_writer.migrations import apply_migrations

    if url := os.environ.get("DATABASE_URL"):
        name = f"dialtone_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(url, f'CREATE DATABASE "{name}"'))
        parts = urlsplit(url)
        test_url = urlunsplit(parts._replace(path=f"/{name}"))
        asyncio.run(apply_migrations(test_url))
        try:
            yield test_url
        finally:
            with contextlib.suppress(Exception):
                asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return
    with embedded_postgres(tmp_root / "pg") as test_url:
        asyncio.run(apply_migrations(test_url))
        yield test_url
