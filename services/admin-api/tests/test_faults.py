"""The admin API with its PostgreSQL stopped or frozen: a fast 503 the client can retry on, never a
500 or a hang, and service again by itself once the database is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from dialtone_admin.app import HEALTH_TIMEOUT_S, create_app
from dialtone_admin.settings import AdminSettings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANSWER_WITHIN_S = 2.0  # "fast 503", as opposed to hanging until some TCP or driver timeout


@pytest.fixture
async def client(controlled_postgres, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AdminSettings(database_url=controlled_postgres.url, nats_url=nats_url, admin_token=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            yield c


@pytest.fixture
async def call_sid(controlled_postgres) -> str:
    """A session in the database, to see it again after an outage."""
    sid = "CA" + uuid.uuid4().hex
    conn = await asyncpg.connect(controlled_postgres.url)
    try:
        await conn.execute(
            "INSERT INTO call_sessions (call_sid, agent, started_at, status) VALUES ($1, 'faults', $2, 'completed')",
            sid, datetime(2025, 3, 1, tzinfo=UTC),
        )
    finally:
        await conn.close()
    return sid


async def timed(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path, headers=AUTH)
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "unavailable" in response.text


async def until_served(client: httpx.AsyncClient, call_sid: str, deadline_s: float = 15.0) -> None:
    """Poll until the API serves the session again, with nobody restarting the API."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = await client.get("/sessions", params={"agent": "faults"}, headers=AUTH)
        if r.status_code == 200 and call_sid in [s["call_sid"] for s in r.json()["items"]]:
            break
        assert r.status_code == 503, r.text  # while it recovers, still the retryable answer
        assert time.monotonic() < deadline, "the API did not recover by itself"
        await asyncio.sleep(0.1)  # polling interval
    assert (await client.get(f"/sessions/{call_sid}", headers=AUTH)).status_code == 200
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_frozen_database_gives_a_fast_503_and_the_api_recovers(client, controlled_postgres, call_sid) -> None:
    await until_served(client, call_sid)
    controlled_postgres.freeze()
    try:
        r, took = await timed(client, "/sessions")
        assert_unavailable(r)
        assert took < ANSWER_WITHIN_S

        r, took = await timed(client, f"/sessions/{call_sid}")
        assert_unavailable(r)
        assert took < ANSWER_WITHIN_S

        # More requests than the pool has connections: those waiting for one are bounded too.
        started = time.monotonic()
        burst = await asyncio.gather(*(client.get("/sessions", headers=AUTH) for _ in range(25)))
        assert [r.status_code for r in burst] == [503] * 25
        assert time.monotonic() - started < ANSWER_WITHIN_S

        r, took = await timed(client, "/healthz")
        assert r.status_code == 503 and r.json()["status"] == "database unavailable"
        assert took < HEALTH_TIMEOUT_S + 0.5
    finally:
        controlled_postgres.thaw()
    await until_served(client, call_sid)


async def test_stopped_database_gives_a_fast_503_and_the_api_recovers(client, controlled_postgres, call_sid) -> None:
    await until_served(client, call_sid)
    await asyncio.to_thread(controlled_postgres.stop)
    try:
        for path in ("/sessions", f"/sessions/{call_sid}", "/sessions"):
            r, took = await timed(client, path)
            assert_unavailable(r)
            assert took < ANSWER_WITHIN_S
        r, took = await timed(client, "/healthz")
        assert r.status_code == 503 and took < HEALTH_TIMEOUT_S + 0.5
        metrics = (await client.get("/metrics")).text
        assert 'dialtone_admin_requests_total{method="GET",route="/sessions",status="503"}' in metrics
    finally:
        await asyncio.to_thread(controlled_postgres.start)  # same port, same data
    await until_served(client, call_sid)
