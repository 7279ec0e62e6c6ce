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
from dialtone_admin.signins import Held
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
    # What the writer does after each batch: the session keeps its transcript, which search reads.
    await db.execute(
        "UPDATE call_sessions s SET transcript = COALESCE((SELECT jsonb_agg(jsonb_build_object("
        "'seq', l.seq, 'role', l.role, 'text', l.text) ORDER BY l.seq) FROM transcript_lines l"
        " WHERE l.call_sid = s.call_sid), '[]') WHERE call_sid = $1",
        call_sid,
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


@pytest.mark.parametrize(
    "path",
    ["/sessions", "/sessions/CAnope", "/live", "/sessions/count", "/sessions/facets", "/sessions/export",
     "/sessions/CAnope/transcript", "/live/stream", "/live/CAnope/listen", "/stats/daily",
     "/webhooks/deliveries"],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_every_api_route_needs_the_token(client, path: str, headers: dict) -> None:
    r = await client.get(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in r.text


async def test_open_routes_and_openapi(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert "Dialtone" in (await client.get("/login")).text
    # The API's description and docs are for operators, not the public listener's passers-by.
    assert (await client.get("/openapi.json")).status_code == 401
    assert (await client.get("/docs")).status_code == 401
    spec = (await client.get("/openapi.json", headers=AUTH)).json()
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
        "ended_at", "duration_s", "end_reason", "cost_usd", "transferred_to", "answered_by", "test_run"}


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


async def _next_event(stream, name: str, timeout: float = 10.0) -> dict:
    async def read() -> dict:
        async for chunk in stream:
            for block in chunk.decode().split("\n\n"):
                lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
                if lines.get("event") == name:
                    return json.loads(lines["data"])
        raise AssertionError("stream ended")

    return await asyncio.wait_for(read(), timeout)


async def test_live_stream_pushes_calls_and_lines_from_the_bus(client, nats_url) -> None:
    from dialtone_admin.stream import LiveHub
    from dialtone_proto import events as ev

    hub: LiveHub = client._transport.app.state.hub
    call_id = "CA" + uuid.uuid4().hex
    stream = hub.stream(Held(None, None, None))  # a bearer stream: no session to outlive
    snapshot = await _next_event(stream, "snapshot")
    assert call_id not in {c["call_id"] for c in snapshot["calls"]}
    nc = await bus.connect(nats_url, "live-stream-test")
    try:
        started = ev.CallStarted(id=f"{call_id}-s", call_id=call_id, at=T0, agent="reception", from_number="+15005550123")
        await nc.publish(started.subject, ev.encode_event(started))
        assert (await _next_event(stream, "call"))["from_number"] == "+15005550123"
        line = ev.TranscriptLine(id=f"{call_id}-1", call_id=call_id, at=T0, item_id="i1", seq=1, role="caller",
                                 text="I would like a table for two", agent="reception")
        await nc.publish(line.subject, ev.encode_event(line))
        got = await _next_event(stream, "line")
        assert (got["call_id"], got["text"], got["role"]) == (call_id, "I would like a table for two", "caller")
        # A browser arriving now gets the call and its lines so far in its snapshot.
        late = hub.stream(Held(None, None, None))  # a bearer stream: no session to outlive
        snap = await _next_event(late, "snapshot")
        assert call_id in {c["call_id"] for c in snap["calls"]}
        assert [x["text"] for x in snap["lines"] if x["call_id"] == call_id] == ["I would like a table for two"]
        await late.aclose()
        end = ev.CallEnded(id=f"{call_id}-e", call_id=call_id, at=T0, reason="hangup")
        await nc.publish(end.subject, ev.encode_event(end))
        assert (await _next_event(stream, "ended"))["call_id"] == call_id
        assert call_id not in {c["call_id"] for c in hub.snapshot()["calls"]}
    finally:
        await stream.aclose()
        await nc.drain()


async def test_a_slow_browser_is_cut_off_not_buffered(client, monkeypatch) -> None:
    from dialtone_admin import stream as stream_module

    monkeypatch.setattr(stream_module, "CLIENT_QUEUE", 4)
    hub = client._transport.app.state.hub
    stream = hub.stream(Held(None, None, None))  # a bearer stream: no session to outlive
    await _next_event(stream, "snapshot")
    for i in range(10):  # never read: the fifth overflows its queue
        hub._publish("line", {"n": i})
    chunks = [chunk async for chunk in stream]
    assert len(chunks) <= 4  # what was queued, then the end of the stream


async def test_listen_in_streams_both_sides_audio_from_the_bus(client, nats_url) -> None:
    from dialtone_admin.stream import _listen
    from dialtone_proto.frames import Kind, encode_control, encode_frame

    call_id = "CA" + uuid.uuid4().hex
    nc = await bus.connect(nats_url, "listen-test")
    stream = _listen(client._transport.app.state.nc, call_id, Held(None, None, None))
    try:
        assert (await _next_event(stream, "listening"))["encoding"] == "mulaw"
        await nc.publish(subjects.call_in(call_id, "k1"), encode_frame(Kind.AUDIO, 0, 0, b"\xff" * 160))
        await nc.publish(subjects.call_in(call_id, "k1"), encode_control(Kind.DTMF, 1, 20, {"digit": "5"}))
        await nc.publish(subjects.call_out(call_id, "k1"), encode_frame(Kind.AUDIO, 0, 0, b"\x7f" * 160))
        first, second = await _next_event(stream, "audio"), await _next_event(stream, "audio")
        assert {first["side"], second["side"]} == {"in", "out"}
        assert {base64.b64decode(first["audio"]), base64.b64decode(second["audio"])} == {b"\xff" * 160, b"\x7f" * 160}
    finally:
        await stream.aclose()
        await nc.drain()


async def test_overview_counts_by_day_in_the_operators_timezone(client, db) -> None:
    agent = f"agent-{uuid.uuid4().hex[:10]}"
    t = datetime(1999, 6, 1, 23, 30, tzinfo=UTC)  # 01:30 on 2 June in Paris, 19:30 on 1 June in New York
    await add_session(db, agent, t, outcome="booked")
    await add_session(db, agent, t + timedelta(hours=1), outcome="booked")
    await add_session(db, agent, t + timedelta(hours=2))
    params = {"since": "1999-05-31T00:00:00+02:00", "until": "1999-06-04T00:00:00+02:00", "tz": "Europe/Paris"}
    r = await client.get("/stats/daily", params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    days = {d["day"]: d for d in r.json()["days"]}
    assert list(days) == ["1999-05-31", "1999-06-01", "1999-06-02", "1999-06-03"]
    assert days["1999-06-02"]["calls"] == 3 and days["1999-06-01"]["calls"] == 0
    assert days["1999-06-02"]["minutes"] == 4.5 and days["1999-06-02"]["cost_usd"] == 0.75
    assert days["1999-06-02"]["outcomes"] == {"booked": 2, "none": 1}
    ny = await client.get("/stats/daily", params={**params, "tz": "America/New_York"}, headers=AUTH)
    assert {d["day"]: d["calls"] for d in ny.json()["days"] if d["calls"]} == {"1999-06-01": 3}
    bad = await client.get("/stats/daily", params={**params, "tz": "Mars/Olympus"}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "tz"]


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


async def signed_in(client) -> None:
    r = await client.post("/auth/session", json={"token": TOKEN})
    assert r.status_code == 200, r.text


async def test_dashboard_runs_under_its_policy(client) -> None:
    await signed_in(client)
    r = await client.get("/calls")
    policy = r.headers["content-security-policy"]
    assert csp_sources(policy, "script-src") == ["'self'"]
    # Styles: the files of this server, and wavesurfer.js's one <style> with this response's nonce.
    (nonce,) = [s for s in csp_sources(policy, "style-src") if s.startswith("'nonce-")]
    assert csp_sources(policy, "style-src") == ["'self'", nonce] and nonce[7:-1] in r.text
    assert nonce != csp_sources((await client.get("/calls")).headers["content-security-policy"], "style-src")[1]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    page = _Page()
    page.feed(r.text)
    # Nothing inline (the policy would block it): the script and styles are files of this server.
    assert page.inline_scripts == [] and page.inline_styles == 0
    assert "/static/dashboard.js" in page.assets and "/static/dashboard.css" in page.assets
    assert "/static/favicon.svg" in page.assets
    for asset in page.assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] in ("text/javascript", "text/css", "image/svg+xml"), asset
        assert served.headers["x-content-type-options"] == "nosniff"
    script = (await client.get("/static/dashboard.js")).text
    # No script of the page holds the token: the session is an HttpOnly cookie.
    assert "sessionStorage" not in script and "localStorage.setItem" not in script
    styles = (await client.get("/static/dashboard.css")).text
    assert "[hidden] { display:none !important; }" in styles
    for name in ("wavesurfer", "uplot"):
        assert (await client.get(f"/static/vendor/{name}/LICENSE")).status_code == 200


@pytest.mark.parametrize("path", ["/calls", "/calls/CA123?x=1", "/monitor", "/overview", "/"])
async def test_pages_without_a_session_redirect_to_sign_in(client, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
    if path != "/":
        assert r.headers["location"] == "/login?next=" + path.replace("/", "%2F").replace("?", "%3F").replace("=", "%3D")
    assert "call" not in r.text.lower()


async def test_sign_in_sets_a_strict_http_only_cookie_that_reads_but_does_not_write(client) -> None:
    assert (await client.post("/auth/session", json={"token": "wrong"})).status_code == 401
    assert (await client.post("/auth/session", json={})).status_code == 422
    evil = await client.post("/auth/session", json={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "set-cookie" not in evil.headers
    r = await client.post("/auth/session", json={"token": TOKEN})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie and r.json()["expires_at"] > time.time() + 3600
    assert (await client.get("/sessions")).status_code == 200
    assert (await client.get("/auth/session")).status_code == 200
    assert (await client.get("/calls")).status_code == 200
    assert (await client.get("/login?next=/monitor")).headers["location"] == "/monitor"
    assert (await client.get("/login?next=//evil.example")).headers["location"] == "/calls"
    # The cookie reads; changing anything (placing a call) still needs the bearer token.
    assert (await client.post("/calls", json={"to": "+15005550006"})).status_code == 401
    # A forged or altered cookie is no session.
    value = client.cookies["dialtone_session"]
    client.cookies.set("dialtone_session", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
    assert (await client.get("/sessions")).status_code == 401
    client.cookies.set("dialtone_session", value)
    out = await client.post("/auth/logout")
    assert out.status_code == 204 and "dialtone_session=" in out.headers["set-cookie"]
    assert (await client.get("/sessions")).status_code == 401
    # Even a copy of the cookie kept from before is refused after signing out.
    client.cookies.set("dialtone_session", value)
    assert (await client.get("/sessions")).status_code == 401
    assert (await client.get("/calls")).status_code == 303


async def test_expired_session_is_refused(database_url: str, nats_url: str) -> None:
    # A cookie's expiry is in whole seconds (int(now + ttl)): a session of 2 s lasts 1 to 2 s, long
    # enough for the first request whenever the sign-in falls within its second (with 1 s, a sign-in
    # late in a second had expired by the first request), and over when the sleep below is.
    settings = AdminSettings(database_url=database_url, nats_url=nats_url, admin_token=TOKEN, session_ttl_s=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            await signed_in(c)
            assert (await c.get("/sessions")).status_code == 200
            await asyncio.sleep(2.1)
            assert (await c.get("/sessions")).status_code == 401
            assert (await c.get("/calls")).status_code == 303


async def test_case_insensitive_filters_direction_number_and_facets(client, db, agent) -> None:
    a = await add_session(db, agent, T0, outcome="Booked")
    b = await add_session(db, agent, T0 + timedelta(minutes=1), outcome="booked")
    c = await add_session(db, agent, T0 + timedelta(minutes=2), outcome="no_answer")
    await db.execute("UPDATE call_sessions SET direction = 'outbound', to_number = '+15005550042' WHERE call_sid = $1", c)
    await db.execute("UPDATE call_sessions SET direction = 'inbound', from_number = '+15005550042' WHERE call_sid = $1", a)
    assert {s["call_sid"] for s in await page_all(client, agent=agent.upper(), outcome="BOOKED")} == {a, b}
    assert [s["call_sid"] for s in await page_all(client, agent=agent, direction="Outbound")] == [c]
    assert [s["call_sid"] for s in await page_all(client, agent=agent, number="+15005550042")] == [c, a]
    assert [s["call_sid"] for s in await page_all(client, agent=agent, status="COMPLETED", outcome="no_answer")] == [c]
    facets = (await client.get("/sessions/facets", headers=AUTH)).json()
    assert agent in facets["agent"] and {"Booked", "booked", "no_answer"} <= set(facets["outcome"])
    assert {"inbound", "outbound"} <= set(facets["direction"]) and "completed" in facets["status"]
    count = (await client.get("/sessions/count", params={"agent": agent, "outcome": "booked"}, headers=AUTH)).json()
    assert count == {"count": 2, "exact": True}


async def test_count_past_the_exact_bound_is_an_estimate(client, db, monkeypatch) -> None:
    from dialtone_admin import sessions

    agent = f"agent-{uuid.uuid4().hex[:10]}"
    for i in range(4):
        await add_session(db, agent, T0 + timedelta(seconds=i))
    monkeypatch.setattr(sessions, "COUNT_EXACT_UP_TO", 2)
    count = (await client.get("/sessions/count", params={"agent": agent}, headers=AUTH)).json()
    assert count["exact"] is False and count["count"] >= 3


async def test_export_csv_and_json_of_the_filtered_list(client, db, agent, monkeypatch) -> None:
    from dialtone_admin import export

    monkeypatch.setattr(export, "EXPORT_BATCH", 2)  # several batches, each its own query
    sids = [await add_session(db, agent, T0 + timedelta(minutes=i), outcome="booked" if i % 2 else "x") for i in range(5)]
    await db.execute("UPDATE call_sessions SET from_number = '=HYPERLINK(1)' WHERE call_sid = $1", sids[0])
    r = await client.get("/sessions/export", params={"agent": agent, "format": "csv"}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="dialtone-calls-')
    rows = r.text.strip().split("\r\n")
    assert rows[0].startswith("call_sid,started_at") and len(rows) == 6
    assert [row.split(",")[0] for row in rows[1:]] == sids[::-1]
    assert "'=HYPERLINK(1)" in rows[-1]  # a spreadsheet shows it, never runs it
    r = await client.get("/sessions/export", params={"agent": agent, "format": "json", "outcome": "BOOKED"}, headers=AUTH)
    assert [row["call_sid"] for row in json.loads(r.text)] == [sids[3], sids[1]]
    r = await client.get("/sessions/export", params={"agent": agent, "format": "json", "limit": 3}, headers=AUTH)
    assert len(json.loads(r.text)) == 3


async def test_transcript_download(client, db, agent) -> None:
    sid = await add_session(db, agent, T0, lines=["Hello there", "Hi"])
    r = await client.get(f"/sessions/{sid}/transcript", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-disposition"] == f'attachment; filename="{sid}.json"'
    assert [line["text"] for line in r.json()["transcript"]] == ["Hello there", "Hi"]
    assert (await client.get("/sessions/CAnope/transcript", headers=AUTH)).status_code == 404


async def test_docs_load_only_local_assets_allowed_by_the_policy(client) -> None:
    r = await client.get("/docs", headers=AUTH)
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
    spec = (await client.get("/openapi.json", headers=AUTH)).json()
    documented = {
        (path, method): set(op["responses"]) for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    assert documented == {
        ("/sessions", "get"): {"200", "400", "401", "422", "429", "503"},
        ("/sessions/count", "get"): {"200", "400", "401", "422", "429", "503"},
        ("/sessions/facets", "get"): {"200", "401", "429", "503"},
        ("/sessions/export", "get"): {"200", "401", "422", "429", "503"},
        ("/sessions/{call_sid}", "get"): {"200", "400", "401", "404", "422", "429", "503"},
        ("/sessions/{call_sid}/transcript", "get"): {"200", "400", "401", "404", "422", "429", "503"},
        ("/sessions/{call_sid}/recording", "get"): {"200", "206", "400", "401", "404", "416", "422", "429", "503"},
        ("/sessions/{call_sid}/waveform", "get"): {"200", "400", "401", "404", "422", "429", "503"},
        ("/live", "get"): {"200", "401", "429"},
        ("/live/stream", "get"): {"200", "401", "429"},
        ("/live/{call_sid}/listen", "get"): {"200", "400", "401", "422", "429", "503"},
        ("/stats/daily", "get"): {"200", "401", "422", "429", "503"},
        ("/calls", "post"): {"201", "400", "401", "422", "429", "502", "503"},
        ("/auth/session", "post"): {"200", "400", "401", "403", "422", "429", "503"},
        ("/auth/session", "get"): {"200", "401", "429"},
        ("/auth/logout", "post"): {"204", "503"},
        ("/auth/sessions", "get"): {"200", "401", "429"},
        ("/auth/sessions", "delete"): {"200", "401", "429", "503"},
        ("/auth/sessions/{signin}", "delete"): {"204", "401", "404", "422", "429", "503"},
        ("/webhooks/deliveries", "get"): {"200", "400", "401", "422", "429", "503"},
        ("/audit/entries", "get"): {"200", "400", "401", "422", "429", "503"},
        ("/webhooks/deliveries/{delivery_id}/resend", "post"): {"200", "400", "401", "404", "422", "429", "503"},
        ("/webhooks/replay", "post"): {"200", "400", "401", "422", "429", "503"},
        ("/tests/runs", "get"): {"200", "401", "422", "429", "503"},
        ("/tests/runs", "post"): {"202", "400", "401", "422", "429", "503"},
        ("/tests/runs/{run_id}", "get"): {"200", "401", "404", "422", "429", "503"},
        ("/tests/scenarios", "get"): {"200", "401", "429", "503"},
        ("/tests/stream", "get"): {"200", "401", "429"},
    }
    sessions = spec["paths"]["/sessions"]["get"]["responses"]
    assert sessions["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in sessions["503"]["headers"]
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]


async def test_database_errors_become_what_a_client_can_act_on(database_url: str) -> None:
    db = await Database.open(database_url, timeout=0.5)
    try:
        # A value PostgreSQL refuses (here past the edge checks on purpose): a 400, not a 500.
        # Its message is ours, never PostgreSQL's text; the driver's error stays the cause, for the log.
        with pytest.raises(QueryRejected, match="^the database cannot take a value") as rejected:
            async with db.connection() as conn:
                await conn.fetchval("SELECT $1::text", "a\x00b")
        assert "0x00" in str(rejected.value.__cause__) and "0x00" not in str(rejected.value)
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
    for n, (received, sent, heard) in enumerate([(690, 700, 800), (895, 900, 1100), (1490, 1500, None),
                                                 (None, 800, 950)]):  # fmt: skip
        await db.execute(
            "INSERT INTO call_turns (event_id, call_sid, turn, item_id, sent_ms, heard_ms, tool_ms, tools, at,"
            " received_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            f"{sid}-t{n}", sid, n, f"r{n}", sent, heard, 300.0 if n == 1 else 0.0, int(n == 1),
            T0 + timedelta(seconds=n), received)
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
    assert [(t["turn"], t["received_ms"], t["sent_ms"], t["heard_ms"], t["tool_ms"]) for t in d["turns"]] == [
        (0, 690, 700, 800, 0), (1, 895, 900, 1100, 300), (2, 1490, 1500, None, 0), (3, None, 800, 950, 0)]
    # Percentiles interpolated between ranks, as PostgreSQL's percentile_cont: sent 700 800 900 1500;
    # received over the turns that have it (690 895 1490).
    assert d["latency"] == {"turns": 4, "received_p50": 895.0, "received_p95": 1430.5, "sent_p50": 850.0,
                            "sent_p95": 1410.0, "heard_p50": 950.0, "heard_p95": 1085.0}
    cost = d["cost"]
    assert cost["usd"] == pytest.approx({"audio_in": 0.032, "audio_out": 0.0192, "text_in": 0, "text_out": 0,
                                         "cached": 0.0002, "transcription": 0.00051, "analysis": 0, "other": 0})
    assert cost["tokens"]["audio_in"] == 1000 and cost["tokens"]["transcription"] == 150
    assert cost["total_usd"] == pytest.approx(0.05191)
    assert cost["duration_s"] == 90.0 and cost["per_minute_usd"] == pytest.approx(0.05191 / 1.5)
    assert cost["hosted_fee_per_minute_usd"] == 0.09 and cost["hosted_fee_usd"] == pytest.approx(0.135)
    assert cost["total_with_hosted_fee_usd"] == pytest.approx(0.05191 + 0.135)


async def test_a_session_without_turns_or_usage_has_empty_latency_and_zero_cost(client, db, agent) -> None:
    sid = await add_session(db, agent, T0)
    d = (await client.get(f"/sessions/{sid}", headers=AUTH)).json()
    assert d["turns"] == [] and d["latency"] == {"turns": 0, "received_p50": None, "received_p95": None,
                                                 "sent_p50": None, "sent_p95": None,
                                                 "heard_p50": None, "heard_p95": None}
    assert d["cost"]["total_usd"] == 0 and d["cost"]["per_minute_usd"] == 0
