"""The tools' PostgreSQL pool, created on first use.

The runner must start (and serve every tool that needs no database) while PostgreSQL is still
coming up or is absent, so the pool is opened lazily by the first query rather than at start-up.
``Database`` therefore mirrors the few ``asyncpg.Pool`` methods tools use, each opening the pool first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from dialtone_common.db import create_pool

from dialtone_tools.errors import ToolError


class Database:
    """A lazily created ``asyncpg`` pool (jsonb as Python objects via ``dialtone_common.db``).

    Args:
        dsn: PostgreSQL DSN, or None when the runner has no database.
        max_size: Largest number of connections in the pool.
    """

    def __init__(self, dsn: str | None, *, max_size: int = 10) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        """Whether a DSN was given."""
        return self._dsn is not None

    async def pool(self) -> asyncpg.Pool:
        """The ``asyncpg.Pool`` itself, opened on first call."""
        if self._pool is None:
            if self._dsn is None:
                raise ToolError("no database is configured for this tool runner (set DATABASE_URL)")
            async with self._lock:  # concurrent first calls must not open two pools
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, min_size=1, max_size=self._max_size)
        return self._pool

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run a query and return all rows."""
        return await (await self.pool()).fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """Run a query and return the first row, or None."""
        return await (await self.pool()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        """Run a query and return one value of the first row."""
        return await (await self.pool()).fetchval(query, *args, column=column)

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement (or, without arguments, several) and return its status."""
        return await (await self.pool()).execute(query, *args)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """Hold one connection, e.g. for ``async with conn.transaction():``."""
        async with (await self.pool()).acquire() as conn:
            yield conn

    async def probe(self, timeout: float) -> str | None:  # noqa: ASYNC109 - the probe's own deadline
        """Ask PostgreSQL ``SELECT 1`` (opening the pool if need be), all within ``timeout``.

        Returns:
            None when it answered, else why not (the error's type). A query cut off by the deadline
            (a frozen server) terminates its connection: returning it would wait on the same server.
        """
        try:
            async with asyncio.timeout(timeout):
                pool = await self.pool()
                async with pool.acquire() as conn:
                    try:
                        await conn.fetchval("SELECT 1")
                    except (asyncio.CancelledError, OSError, asyncpg.InterfaceError):
                        conn.terminate()
                        raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return type(exc).__name__
        return None

    async def close(self) -> None:
        """Close the pool if it was ever opened."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
