"""The admin API's webhook deliveries: the list with attempts and filters, resend (bearer, or the
dashboard's cookie from its own page) and replay, against the real test PostgreSQL."""

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
T0 = datetime(2025, 4, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def client(database_url: str, nats_url: str):
    app = create_app(AdminSettings(database_url=database_url, nats_url=nats_url, admin_token=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            yield c


@pytest.fixture
async def db(database_url: str):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def add_delivery(db, call: str, endpoint: str, event_type: str, at: datetime, status: str, tries: list) -> str:
    did = "msg_" + uuid.uuid4().hex
    await db.execute(
        "INSERT INTO webhook_deliveries (id, endpoint, url, event_id, event_type, call_sid, event_at, status,"
        " attempts, last_status) VALUES ($1, $2, 'https://crm.example.com/h', $3, $4, $5, $6, $7, $8, $9)",
        did, endpoint, f"{call}-{event_type}", event_type, call, at, status, len(tries),
        tries[-1][0] if tries else None,
    )
    for n, (code, error) in enumerate(tries, 1):
        await db.execute(
            "INSERT INTO webhook_attempts (delivery_id, n, at, status_code, latency_ms, response, error)"
            " VALUES ($1, $2, $3, $4, 12.5, $5, $6)",
            did, n, at + timedelta(seconds=n), code, "x" * 200 if code else None, error,
        )
    return did


async def test_list_filters_pages_and_shows_attempts(client, db) -> None:
    call, endpoint = "CA" + uuid.uuid4().hex, f"ep-{uuid.uuid4().hex[:8]}"
    ok = await add_delivery(db, call, endpoint, "call.started", T0, "delivered", [(500, "HTTP 500"), (200, None)])
    dead = await add_delivery(db, call, endpoint, "call.ended", T0 + timedelta(minutes=1), "dead", [(None, "timeout")])
    r = await client.get("/webhooks/deliveries", params={"call": call}, headers=AUTH)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["id"] for i in items] == [dead, ok]  # newest first
    assert [a["status_code"] for a in items[1]["attempts"]] == [500, 200]
    assert items[0]["attempts"][0]["error"] == "timeout" and items[0]["attempts"][0]["latency_ms"] == 12.5
    r = await client.get("/webhooks/deliveries", params={"endpoint": endpoint, "status": "dead"}, headers=AUTH)
    assert [i["id"] for i in r.json()["items"]] == [dead]
    first = (await client.get("/webhooks/deliveries", params={"call": call, "limit": 1}, headers=AUTH)).json()
    second = (await client.get("/webhooks/deliveries", params={"call": call, "limit": 1, "cursor": first["next_cursor"]},
                               headers=AUTH)).json()
    assert [i["id"] for i in first["items"] + second["items"]] == [dead, ok] and second["next_cursor"] is None
    assert (await client.get("/webhooks/deliveries", params={"cursor": "bogus"}, headers=AUTH)).status_code == 400
    assert (await client.get("/webhooks/deliveries")).status_code == 401


async def test_resend_needs_the_token_or_a_same_origin_session(client, db) -> None:
    call = "CA" + uuid.uuid4().hex
    dead = await add_delivery(db, call, "global", "call.ended", T0, "dead", [(410, "HTTP 410")])
    assert (await client.post(f"/webhooks/deliveries/{dead}/resend")).status_code == 401
    r = await client.post("/auth/session", json={"token": TOKEN})
    assert r.status_code == 200
    # The session cookie from another site's page is refused; from this server's own page it works.
    assert (await client.post(f"/webhooks/deliveries/{dead}/resend",
                              headers={"Origin": "https://evil.example"})).status_code == 401
    r = await client.post(f"/webhooks/deliveries/{dead}/resend", headers={"Origin": "http://admin"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending" and r.json()["next_attempt_at"] is not None
    client.cookies.clear()
    assert (await client.post("/webhooks/deliveries/msg_nope/resend", headers=AUTH)).status_code == 404
    row = await db.fetchrow("SELECT status, retry_from FROM webhook_deliveries WHERE id = $1", dead)
    assert row["status"] == "pending" and row["retry_from"] > datetime.now(UTC) - timedelta(minutes=1)


async def test_replay_sets_a_time_range_pending_again(client, db) -> None:
    endpoint = f"ep-{uuid.uuid4().hex[:8]}"
    early = datetime(2024, 1, 1, tzinfo=UTC)
    inside = [await add_delivery(db, "CA" + uuid.uuid4().hex, endpoint, "call.ended", early + timedelta(hours=h),
                                 "delivered", [(200, None)]) for h in (1, 2)]
    outside = await add_delivery(db, "CA" + uuid.uuid4().hex, endpoint, "call.ended", early + timedelta(days=3),
                                 "delivered", [(200, None)])
    params = {"since": "2024-01-01T00:00:00Z", "until": "2024-01-02T00:00:00Z", "endpoint": endpoint}
    r = await client.post("/webhooks/replay", params=params)
    assert r.status_code == 401  # the bearer token only
    r = await client.post("/webhooks/replay", params=params, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"replayed": 2}
    statuses = {row["id"]: row["status"] for row in await db.fetch(
        "SELECT id, status FROM webhook_deliveries WHERE endpoint = $1", endpoint)}
    assert statuses == {inside[0]: "pending", inside[1]: "pending", outside: "delivered"}
