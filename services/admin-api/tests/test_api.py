"""Integration tests of the admin API against the real test database and NATS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import asyncpg
import httpx
import pytest
from dialtone_admin.app import create_app
from dialtone_admin.database import Database, DatabaseUnavailable, QueryRejected
from dialtone_admin.settings import AdminSettings
from dialtone_common import bus
from dialtone_proto import subjects
from dialtone_proto.live import LiveCall

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


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


@pytest.fixture
def agent() -> str:
    """A unique agent name: tests share one database, so each selects only its own sessions."""
    return f"agent-{uuid.uuid4().hex[:10]}"


async def add_session(db, agent: str, started: datetime, outcome: str | None = None, lines: list[str] = ()) -> str:
    call_sid = "CA" + uuid.uuid4().hex
    await db.execute(
        "INSERT INTO call_sessions (call_sid, agent, started_at, ended_at, outcome, status, cost_usd)"
        " VALUES ($1, $2, $3, $4, $5, 'completed', 0.25)",
        call_sid, agent, started, started + timedelta(seconds=90), outcome,
    )
    for seq, text in enumerate(lines):
        await db.execute(
            "INSERT INTO transcript_lines (call_sid, seq, item_id, role, text, agent, source, at, event_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, 'speech', $7, $8)",
            call_sid, seq, f"item{seq}", "caller" if seq % 2 else "agent", text, agent,
            started + timedelta(seconds=seq), f"{call_sid}-{seq}",
        )
    return call_sid


async def page_all(client, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        r = await client.get("/sessions", params={**params, **({"cursor": cursor} if cursor else {})}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize("path", ["/sessions", "/sessions/CAnope", "/live"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_every_api_route_needs_the_token(client, path: str, headers: dict) -> None:
    r = await client.get(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in r.text


async def test_open_routes_and_openapi(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert "Dialtone" in (await client.get("/")).text
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    await client.get("/sessions", headers=AUTH)
    metrics = (await client.get("/metrics")).text
    assert 'dialtone_admin_requests_total{method="GET",route="/sessions",status="200"}' in metrics


async def test_sessions_newest_first_and_keyset_pagination_with_ties(client, db, agent) -> None:
    expected = []
    for i in range(4):
        expected.append(await add_session(db, agent, T0 + timedelta(minutes=i)))
    for _ in range(7):  # equal started_at: only the id tells them apart
        expected.append(await add_session(db, agent, T0 + timedelta(minutes=10)))
    items = await page_all(client, agent=agent, limit=3)
    sids = [s["call_sid"] for s in items]
    assert sorted(sids) == sorted(expected) and len(sids) == len(set(sids)) == 11
    assert [s["started_at"] for s in items] == sorted((s["started_at"] for s in items), reverse=True)
    assert sids[-4:] == expected[3::-1]
    assert items[0]["duration_s"] == 90.0 and items[0]["cost_usd"] == 0.25
    assert set(items[0]) == {
        "call_sid", "agent", "direction", "from_number", "to_number", "status", "outcome", "started_at",
        "ended_at", "duration_s", "end_reason", "cost_usd", "transferred_to", "answered_by"}


async def test_outcome_and_date_filters(client, db, agent) -> None:
    booked = await add_session(db, agent, T0, outcome="booked")
    await add_session(db, agent, T0 + timedelta(days=1), outcome="no_answer")
    late = await add_session(db, agent, T0 + timedelta(days=2), outcome="booked")
    assert {s["call_sid"] for s in await page_all(client, agent=agent, outcome="booked")} == {booked, late}
    window = await page_all(client, agent=agent, since=(T0 + timedelta(hours=1)).isoformat(), until="2025-03-03")
    assert [s["outcome"] for s in window] == ["no_answer"]
    assert [s["call_sid"] for s in await page_all(client, agent=agent, since="2025-03-03T12:00:00Z")] == [late]


async def test_full_text_search(client, db, agent) -> None:
    dentist = await add_session(db, agent, T0, lines=["Hello, how can I help?", "I need a dentist appointment"])
    await add_session(db, agent, T0, lines=["Hello", "Where is my parcel?"])
    assert [s["call_sid"] for s in await page_all(client, agent=agent, q="dentist")] == [dentist]
    assert [s["call_sid"] for s in await page_all(client, agent=agent, q="DENTIST appointment")] == [dentist]
    assert len(await page_all(client, agent=agent, q="hello")) == 2


@pytest.mark.parametrize(
    "params",
    [{"outcome": "x' OR '1'='1"}, {"q": "'); DROP TABLE call_sessions; --"}, {"agent": "a\"; SELECT 1;--"},
     {"status": "completed' --"}, {"q": "!!&|:*()"}],
)
async def test_injection_attempts_are_just_values(client, db, agent, params: dict) -> None:
    await add_session(db, agent, T0, outcome="booked", lines=["hi"])
    r = await client.get("/sessions", params={"agent": agent, **params}, headers=AUTH)
    assert r.status_code == 200 and r.json()["items"] == []
    assert await db.fetchval("SELECT count(*) FROM call_sessions WHERE agent = $1", agent) == 1


@pytest.mark.parametrize("cursor", ["garbage", "eyJ4Ijo", "WzEsMl0"])
async def test_bad_cursor_is_a_400(client, cursor: str) -> None:
    r = await client.get("/sessions", params={"cursor": cursor}, headers=AUTH)
    assert r.status_code == 400 and "invalid cursor" in r.json()["detail"]


async def test_limit_is_bounded(client) -> None:
    assert (await client.get("/sessions", params={"limit": 201}, headers=AUTH)).status_code == 422


async def test_session_detail_and_404(client, db, agent) -> None:
    sid = await add_session(db, agent, T0, outcome="booked", lines=["Hi, Acme here", "Book me in"])
    await db.execute(
        "UPDATE call_sessions SET usage = $2::jsonb, metrics = '{\"first_agent_audio_ms\": 420}'::jsonb"
        " WHERE call_sid = $1", sid, '{"input_tokens": 100, "responses": 2}')
    await db.execute(
        "INSERT INTO tool_calls (call_sid, tool_call_id, seq, name, agent, arguments, ok, result, duration_ms, at,"
        " event_id) VALUES ($1, 'c2', 3, 'book', $2, '{\"slot\": \"9:00\"}', true, '{\"ok\": 1}', 5, $3, 'e2'),"
        " ($1, 'c1', 1, 'find', $2, NULL, false, NULL, 7, $3, 'e1')", sid, agent, T0)
    await db.execute(
        "INSERT INTO call_status_history (event_id, call_sid, status, source, at) VALUES"
        " ($1 || 'b', $1, 'completed', 'twilio', $2), ($1 || 'a', $1, 'in-progress', 'twilio', $3)",
        sid, T0 + timedelta(seconds=90), T0)
    await db.execute(
        "INSERT INTO agent_changes (event_id, call_sid, from_agent, to_agent, at) VALUES ($1 || 'h', $1, $2, 'b', $3)",
        sid, agent, T0)

    r = await client.get(f"/sessions/{sid}", headers=AUTH)
    assert r.status_code == 200
    d = r.json()
    assert d["call_sid"] == sid and d["outcome"] == "booked"
    assert [(t["seq"], t["role"], t["text"]) for t in d["transcript"]] == [
        (0, "agent", "Hi, Acme here"), (1, "caller", "Book me in")]
    assert [(t["name"], t["arguments"], t["ok"]) for t in d["tool_calls"]] == [
        ("find", None, False), ("book", {"slot": "9:00"}, True)]
    assert d["usage"]["input_tokens"] == 100 and d["usage"]["responses"] == 2 and d["usage"]["cost_usd"] == 0.25
    assert d["usage"]["output_audio_tokens"] == 0
    assert [s["status"] for s in d["status_history"]] == ["in-progress", "completed"]
    assert d["metrics"] == {"first_agent_audio_ms": 420}
    assert [(a["from_agent"], a["to_agent"]) for a in d["agents"]] == [(agent, "b")]

    r = await client.get("/sessions/CAunknown", headers=AUTH)
    assert r.status_code == 404


async def test_live_calls_from_heartbeats(client, nats_url) -> None:
    call_id = "CA" + uuid.uuid4().hex
    nc = await bus.connect(nats_url, "live-test")
    try:
        beat = LiveCall(call_id=call_id, agent="reception", started_at=T0, bridge_id="bridge-1", state="speaking")
        await nc.publish(subjects.live(call_id), beat.model_dump_json().encode())
        await nc.publish(subjects.live(call_id), b"{not a heartbeat")
        await nc.flush()
        deadline = time.monotonic() + 10
        while True:
            items = (await client.get("/live", headers=AUTH)).json()["items"]
            if any(i["call_id"] == call_id for i in items):
                break
            assert time.monotonic() < deadline, "heartbeat never showed up"
            await asyncio.sleep(0.05)  # polling interval
        assert next(i for i in items if i["call_id"] == call_id)["state"] == "speaking"
    finally:
        await nc.drain()


def forged_cursor(started: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([started, row_id]).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params", "field", "complaint"),
    [
        ("/sessions", {"q": "dentist\x00"}, "q", "NUL"),
        ("/sessions", {"outcome": "\x00"}, "outcome", "NUL"),
        ("/sessions", {"status": "completed\x00"}, "status", "NUL"),
        ("/sessions", {"agent": "a\x00b"}, "agent", "NUL"),
        ("/sessions", {"cursor": "\x00"}, "cursor", "NUL"),
        ("/sessions/CA%00", {}, "call_sid", "NUL"),
        ("/sessions", {"since": "0001-01-01T00:00+14:00"}, "since", "between 0001-01-01 and 9999-12-31"),
        ("/sessions", {"until": "9999-12-31T23:59-14:00"}, "until", "between 0001-01-01 and 9999-12-31"),
        ("/sessions", {"since": "10000-01-01T00:00Z"}, "since", "ISO 8601"),
        ("/sessions", {"until": "1700000000"}, "until", "ISO 8601"),
        ("/sessions", {"q": "x" * 201}, "q", "at most 200 characters"),
        ("/sessions", {"agent": "a" * 201}, "agent", "at most 200 characters"),
        ("/sessions", {"limit": str(2**63)}, "limit", "less than or equal to 200"),
        ("/sessions/" + "C" * 201, {}, "call_sid", "at most 200 characters"),
    ],
)
async def test_inputs_postgresql_cannot_take_are_422_naming_the_field(
    client, path: str, params: dict, field: str, complaint: str
) -> None:
    r = await client.get(path, params=params, headers=AUTH)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"][-1] == field and complaint in error["msg"]


@pytest.mark.parametrize(
    "cursor",
    [forged_cursor("2025-03-01T12:00:00+00:00", 2**63), forged_cursor("0001-01-01T00:00:00+14:00", 1)],
)
async def test_cursors_postgresql_cannot_take_are_400(client, cursor: str) -> None:
    r = await client.get("/sessions", params={"cursor": cursor}, headers=AUTH)
    assert r.status_code == 400 and "invalid cursor" in r.json()["detail"]


async def test_dates_at_the_edges_of_the_range_work(client, db, agent) -> None:
    sid = await add_session(db, agent, T0)
    assert [s["call_sid"] for s in await page_all(client, agent=agent, since="0001-01-01T00:00Z")] == [sid]
    assert [s["call_sid"] for s in await page_all(client, agent=agent, until="9999-12-31T23:59:59Z")] == [sid]
    # No zone means UTC: a window ending one second after the call started holds it.
    assert len(await page_all(client, agent=agent, until="2025-03-01T12:00:01")) == 1


@pytest.mark.parametrize("q", ["-" * 40, "- " * 40, "-(" * 40, "!" * 40, "-" * 200, '"-' * 60, "or " * 60])
async def test_pathological_searches_answer(client, db, agent, q: str) -> None:
    await add_session(db, agent, T0, lines=["I need a dentist appointment"])
    r = await client.get("/sessions", params={"agent": agent, "q": q}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []  # none of these is a word said in the call


async def test_search_negation_still_works(client, db, agent) -> None:
    dentist = await add_session(db, agent, T0, lines=["I need a dentist appointment"])
    await add_session(db, agent, T0, lines=["I need a parcel appointment"])
    assert [s["call_sid"] for s in await page_all(client, agent=agent, q="appointment -parcel")] == [dentist]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/sessions", None), ("GET", "/sessions/CAunknown", None), ("GET", "/live", None),
     ("POST", "/calls", {"to": "+15551234567"}), ("GET", "/sessions?limit=0", None)],
)
async def test_data_responses_are_not_stored_and_carry_the_security_headers(
    client, method: str, path: str, body: dict | None
) -> None:
    r = await client.request(method, path, json=body, headers=AUTH)
    assert r.status_code < 500 or r.status_code == 503  # POST /calls: no Twilio credentials here
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


class _Page(HTMLParser):
    """What a browser would load and run from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.assets: list[str] = []
        self.inline_styles = 0
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "style" in a or tag == "style":
            self.inline_styles += 1
        if tag == "script" and a.get("src"):
            self.assets.append(a["src"] or "")
        elif tag == "script":
            self._in_inline_script = True
            self.inline_scripts.append("")
        if tag == "link" and a.get("rel") in ("stylesheet", "icon", "shortcut icon") and a.get("href"):
            self.assets.append(a["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts[-1] += data


def csp_sources(policy: str, directive: str) -> list[str]:
    for part in policy.split(";"):
        name, *sources = part.split()
        if name == directive:
            return sources
    raise AssertionError(f"no {directive} in {policy!r}")


async def test_dashboard_runs_under_its_policy(client) -> None:
    r = await client.get("/")
    policy = r.headers["content-security-policy"]
    assert csp_sources(policy, "script-src") == ["'self'"] and csp_sources(policy, "style-src") == ["'self'"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    page = _Page()
    page.feed(r.text)
    # Nothing inline (the policy would block it): the script and styles are files of this server.
    assert page.inline_scripts == [] and page.inline_styles == 0
    assert "/static/dashboard.js" in page.assets and "/static/dashboard.css" in page.assets
    for asset in page.assets:
        if asset.startswith("data:"):
            continue
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), asset
        assert served.headers["x-content-type-options"] == "nosniff"
    script = (await client.get("/static/dashboard.js")).text
    # The token is kept per tab, not in localStorage where it outlived the browser session.
    assert "sessionStorage" in script and "localStorage.setItem" not in script
    styles = (await client.get("/static/dashboard.css")).text
    assert "[hidden] { display:none !important; }" in styles


async def test_docs_load_only_local_assets_allowed_by_the_policy(client) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    page = _Page()
    page.feed(r.text)
    assert page.assets and all(a.startswith("/static/swagger-ui/") for a in page.assets)
    for asset in page.assets:
        served = await client.get(asset)
        assert served.status_code == 200 and len(served.content) > 500, asset
    # Its one inline script (the SwaggerUIBundle call) runs only because its hash is in the policy.
    allowed = csp_sources(r.headers["content-security-policy"], "script-src")
    for script in page.inline_scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in allowed
    assert "'unsafe-inline'" not in allowed
    assert (await client.get("/static/swagger-ui/LICENSE")).status_code == 200
    assert (await client.get("/redoc")).status_code == 404  # it would load from a CDN


async def test_openapi_documents_the_error_responses(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    documented = {
        (path, method): set(op["responses"]) for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    assert documented == {
        ("/sessions", "get"): {"200", "400", "401", "422", "503"},
        ("/sessions/{call_sid}", "get"): {"200", "400", "401", "404", "422", "503"},
        ("/live", "get"): {"200", "401"},
        ("/calls", "post"): {"201", "400", "401", "422", "502", "503"},
    }
    sessions = spec["paths"]["/sessions"]["get"]["responses"]
    assert sessions["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in sessions["503"]["headers"]
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]


async def test_database_errors_become_what_a_client_can_act_on(database_url: str) -> None:
    db = await Database.open(database_url, timeout=0.5)
    try:
        # A value PostgreSQL refuses (here past the edge checks on purpose): a 400, not a 500.
        with pytest.raises(QueryRejected, match="0x00"):
            async with db.connection() as conn:
                await conn.fetchval("SELECT $1::text", "a\x00b")
        # Past the deadline: unavailable (503), on time, and the interrupted connection is discarded...
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as caught:
            async with db.connection() as conn:
                await conn.fetchval("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 1.5
        assert isinstance(caught.value.__cause__, TimeoutError)
        # ...so the next request gets a working one.
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def test_session_detail_has_what_was_heard_the_turns_and_the_cost(client, db, agent) -> None:
    sid = await add_session(db, agent, T0)  # 90 s long
    await db.execute(
        "INSERT INTO transcript_lines (call_sid, seq, item_id, role, text, agent, source, interrupted, at, event_id,"
        " rev, offset_ms, heard_ms, audio_ms, full_text) VALUES"
        " ($1, 0, 'a1', 'agent', 'We are open', $2, 'speech', true, $3, 'e1', 1, 1520.5, 900, 2400,"
        " 'We are open from nine to five.')", sid, agent, T0)
    for n, (sent, heard) in enumerate([(700, 800), (900, 1100), (1500, None), (800, 950)]):
        await db.execute(
            "INSERT INTO call_turns (event_id, call_sid, turn, item_id, sent_ms, heard_ms, tool_ms, tools, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            f"{sid}-t{n}", sid, n, f"r{n}", sent, heard, 300.0 if n == 1 else 0.0, int(n == 1),
            T0 + timedelta(seconds=n))
    await db.execute(
        "UPDATE call_sessions SET cost_breakdown = $2::jsonb WHERE call_sid = $1", sid,
        json.dumps({"audio_in_usd": 0.032, "audio_in_tokens": 1000, "audio_out_usd": 0.0192, "audio_out_tokens": 300,
                    "cached_usd": 0.0002, "cached_tokens": 500, "transcription_usd": 0.00051,
                    "transcription_tokens": 150}))

    d = (await client.get(f"/sessions/{sid}", headers=AUTH)).json()
    [line] = d["transcript"]
    assert (line["text"], line["interrupted"], line["heard_ms"], line["audio_ms"], line["offset_ms"]) == (
        "We are open", True, 900, 2400, 1520.5)
    assert line["full_text"] == "We are open from nine to five."
    assert [(t["turn"], t["sent_ms"], t["heard_ms"], t["tool_ms"]) for t in d["turns"]] == [
        (0, 700, 800, 0), (1, 900, 1100, 300), (2, 1500, None, 0), (3, 800, 950, 0)]
    # Percentiles interpolated between ranks, as PostgreSQL's percentile_cont: sent 700 800 900 1500.
    assert d["latency"] == {"turns": 4, "sent_p50": 850.0, "sent_p95": 1410.0, "heard_p50": 950.0,
                            "heard_p95": 1085.0}
    cost = d["cost"]
    assert cost["usd"] == pytest.approx({"audio_in": 0.032, "audio_out": 0.0192, "text_in": 0, "text_out": 0,
                                         "cached": 0.0002, "transcription": 0.00051, "other": 0})
    assert cost["tokens"]["audio_in"] == 1000 and cost["tokens"]["transcription"] == 150
    assert cost["total_usd"] == pytest.approx(0.05191)
    assert cost["duration_s"] == 90.0 and cost["per_minute_usd"] == pytest.approx(0.05191 / 1.5)
    assert cost["hosted_fee_per_minute_usd"] == 0.09 and cost["hosted_fee_usd"] == pytest.approx(0.135)
    assert cost["total_with_hosted_fee_usd"] == pytest.approx(0.05191 + 0.135)


async def test_a_session_without_turns_or_usage_has_empty_latency_and_zero_cost(client, db, agent) -> None:
    sid = await add_session(db, agent, T0)
    d = (await client.get(f"/sessions/{sid}", headers=AUTH)).json()
    assert d["turns"] == [] and d["latency"] == {"turns": 0, "sent_p50": None, "sent_p95": None,
                                                 "heard_p50": None, "heard_p95": None}
    assert d["cost"]["total_usd"] == 0 and d["cost"]["per_minute_usd"] == 0
