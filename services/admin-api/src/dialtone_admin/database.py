"""The admin API's use of PostgreSQL: every request's database work is bounded in time, and driver
errors become the two failures a client can act on.

    DatabaseError
     ├── DatabaseUnavailable   down, frozen, overloaded or unreachable: answer 503, the client retries
     └── QueryRejected         PostgreSQL refused a value we passed it (out of range, bad text): 400

Anything else the driver raises is a bug of ours and stays a 500. The original driver error is kept
as ``__cause__``.

Why the deadline wraps the whole block and not only each query: with the server frozen (SIGSTOP,
a dead network path) a pooled connection looks fine, so the acquire succeeds at once and the query
then waits on a socket that never answers. A connection interrupted that way is terminated rather
than returned: resetting it would wait on the same frozen server. The pool opens a fresh one on the
next acquire, which is how the API recovers by itself once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg import exceptions as pg
from dialtone_common.db import create_pool

log = logging.getLogger(__name__)

# Errors that say "the database cannot serve you now", as opposed to "your query is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # our deadline, the pool's acquire timeout, asyncpg's command or connect timeout
    asyncpg.InterfaceError,  # connection closed under us, pool closing
    pg.PostgresConnectionError,  # SQLSTATE class 08
    pg.OperatorInterventionError,  # class 57: shutting down, starting up, query cancelled
    pg.InsufficientResourcesError,  # class 53: too many connections, out of memory or disk
)
# Errors that say "PostgreSQL cannot take this value": the client's input got past our checks.
_REJECTED: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # class 22 (NUL in text, dates or integers out of range), argument encoding
    pg.ProgramLimitExceededError,  # class 54: statement too complex, stack depth
)


class DatabaseError(Exception):
    """A database failure the API answers with a 4xx or 5xx of its own rather than a 500."""


class DatabaseUnavailable(DatabaseError):
    """The database did not answer in time or refused the connection; retrying later may work."""


class QueryRejected(DatabaseError):
    """PostgreSQL refused a value of the request."""


class Database:
    """The admin API's pool with a deadline on every use.

    Args:
        pool: a pool made by ``dialtone_common.db.create_pool``.
        timeout: seconds a request's database work may take, waiting for a connection included.
    """

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool, self.timeout = pool, timeout

    @classmethod
    async def open(cls, dsn: str, timeout: float) -> Database:
        return cls(await create_pool(dsn), timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool; past ``timeout`` (a frozen server) its connections are cut instead."""
        try:
            # asyncpg terminates the pool when close() is cancelled.
            await asyncio.wait_for(self._pool.close(), timeout)
        except TimeoutError:
            log.warning("database pool did not close within %.0f s; connections terminated", timeout)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one request's queries, all of it within ``timeout``.

        Args:
            timeout: seconds for the acquire and everything done in the block; ``self.timeout`` if None.

        Raises:
            DatabaseUnavailable: the deadline passed or the connection failed.
            QueryRejected: PostgreSQL refused a value.
        """
        budget = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(budget), self._pool.acquire(timeout=budget) as conn:
                try:
                    yield conn
                except (asyncio.CancelledError, *_UNAVAILABLE):  # type: ignore[misc]  # mypy reads a starred tuple of classes as an instance
                    # Interrupted mid-query (our deadline) or a broken socket: the connection's
                    # state is unknown and resetting it could wait on a frozen server.
                    conn.terminate()
                    raise
        except _UNAVAILABLE as exc:
            log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc
        except _REJECTED as exc:
            # PostgreSQL's own text names its internals (and echoes what it was given): it goes to
            # the log, the client gets what it can act on.
            log.info("database rejected a value: %s: %s", type(exc).__name__, exc)
            raise QueryRejected(
                "the database cannot take a value of this request (out of range, or text it cannot store)"
            ) from exc

