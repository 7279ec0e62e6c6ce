"""Test calls (``dialtone eval``) in the admin API: the call list filters them, and the overview
leaves them out of its counts and costs unless asked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from dialtone_admin.app import create_app
from dialtone_admin.settings import AdminSettings

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(database_url: str, nats_url: str):
    app = create_app(AdminSettings(database_url=database_url, nats_url=nats_url, admin_token=TOKEN))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
            yield c


async def add(conn: asyncpg.Connection, agent: str, started: datetime, test_run: str | None) -> str:
    call_sid = "CA" + uuid.uuid4().hex
    await conn.execute(
        "INSERT INTO call_sessions (call_sid, agent, started_at, ended_at, status, cost_usd, test_run)"
        " VALUES ($1, $2, $3, $4, 'completed', 0.5, $5)",
        call_sid, agent, started, started + timedelta(seconds=60), test_run,
    )  # fmt: skip
    return call_sid


async def test_the_list_filters_test_calls_and_the_overview_leaves_them_out(client, database_url: str) -> None:
    agent = f"agent-{uuid.uuid4().hex[:10]}"
    t = datetime(1998, 3, 2, 10, 0, tzinfo=UTC)
    conn = await asyncpg.connect(database_url)
    try:
        real = await add(conn, agent, t, None)
        test = await add(conn, agent, t + timedelta(minutes=1), "20260101T000000-abc123")
    finally:
        await conn.close()

    async def listed(**params: str) -> list[str]:
        r = await client.get("/sessions", params={"agent": agent, **params}, headers=AUTH)
        assert r.status_code == 200, r.text
        return [s["call_sid"] for s in r.json()["items"]]

    assert await listed() == [test, real]  # the list shows every call unless filtered
    assert await listed(test="include") == [test, real]
    assert await listed(test="exclude") == [real]
    assert await listed(test="only") == [test]
    r = await client.get("/sessions/count", params={"agent": agent, "test": "only"}, headers=AUTH)
    assert r.json()["count"] == 1
    r = await client.get(f"/sessions/{test}", headers=AUTH)
    assert r.json()["test_run"] == "20260101T000000-abc123"
    assert (await client.get("/sessions", params={"test": "some"}, headers=AUTH)).status_code == 422

    days = {"since": "1998-03-02T00:00:00", "until": "1998-03-03T00:00:00"}
    r = await client.get("/stats/daily", params=days, headers=AUTH)
    (day,) = r.json()["days"]
    assert (day["calls"], day["cost_usd"], day["minutes"]) == (1, 0.5, 1.0)  # the test call left out
    r = await client.get("/stats/daily", params={**days, "tests": "include"}, headers=AUTH)
    (day,) = r.json()["days"]
    assert (day["calls"], day["cost_usd"]) == (2, 1.0)
