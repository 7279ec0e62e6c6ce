"""Pytest fixtures shared by every tier: real NATS with JetStream and real PostgreSQL, and the
simulators' verdict on every test.

With ``NATS_URL`` / ``DATABASE_URL`` set, the tests use those servers (a fresh database is created
on the PostgreSQL server for the session and dropped afterwards); otherwise they start embedded
servers, exactly as ``make run`` does on a fresh machine.

A simulator's own verdict fails the test: :func:`sim_verdict` (autouse) fails any test during
which a simulator recorded a protocol error, a refused or invalid event, or an internal error
(see :mod:`dialtone_sim.verdicts`). A test that provokes such errors on purpose says so with
``@pytest.mark.expect_sim_errors("regex", ...)``: then every recorded error must match one of the
patterns, and every pattern must match a recorded error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from dialtone_common.embedded import embedded_nats, embedded_postgres

from dialtone_sim.verdicts import Watch

# Errors recorded after one test's watch closed and before the next one opened.
_between: dict[str, object] = {"watch": None, "after": None}


def _judge(errors: list[str], patterns: tuple[str, ...]) -> list[str]:
    """The complaints about ``errors`` given the expected ``patterns`` (none: no error expected)."""
    unexpected = [e for e in errors if not any(re.search(p, e) for p in patterns)]
    missing = [p for p in patterns if not any(re.search(p, e) for e in errors)]
    return [f"unexpected: {e}" for e in unexpected] + [f"expected but not seen: {p!r}" for p in missing]


@pytest.fixture(autouse=True)
def sim_verdict(request: pytest.FixtureRequest) -> Iterator[Watch]:
    """Fail the test if a simulator saw something go wrong while it ran (see the module docstring)."""
    gap = _between["watch"]
    if isinstance(gap, Watch) and (leftover := gap.close()):
        _between["watch"] = None
        pytest.fail(
            f"simulators recorded errors after {_between['after']} ended (before this test):\n  "
            + "\n  ".join(leftover[:20]),
            pytrace=False,
        )
    watch = Watch().open()
    yield watch
    errors = watch.close()
    _between["watch"], _between["after"] = Watch().open(), request.node.nodeid
    marker = request.node.get_closest_marker("expect_sim_errors")
    patterns = tuple(marker.args) if marker else ()
    if marker and not patterns:
        pytest.fail("expect_sim_errors needs the patterns of the errors the test provokes", pytrace=False)
    if complaints := _judge(errors, patterns):
        pytest.fail("the simulators' verdict:\n  " + "\n  ".join(complaints[:20]), pytrace=False)


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
