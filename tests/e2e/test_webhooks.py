"""Acceptance: a simulated call through the platform reaches the operator's endpoint as signed
call.started and call.ended webhooks whose data is what GET /sessions/{id} answers.

The session's platform runs its writer without webhooks; this test restarts that writer with
WEBHOOK_URL/WEBHOOK_SECRET pointing at a local receiver, and restores it afterwards. The receiver
checks every signature by hand from the Standard Webhooks spec."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from dialtone_dev.platform import Platform
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_edge import dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, Admin

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-of-32-bytes!!").decode()
SCENARIO = Scenario(turns=[Turn(caller="What are your opening hours?", agent="Nine to five, Monday to Friday.")])


def verify(headers: dict[str, str], body: bytes) -> None:
    """HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the base64-decoded secret, as ``v1,<b64>``."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(stamp)) < 300
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    assert f"v1,{mac}" in headers["webhook-signature"].split(" ")


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A CRM's endpoint: it checks every signature by hand and keeps what it got; its URL and hits."""
    hits: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verify(headers, body)
        hits.append({"id": headers["webhook-id"], **orjson.loads(body)})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/crm", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/crm", hits
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    async with webhook_receiver() as endpoint:
        yield endpoint


async def restart_writer(platform: Platform, env: dict[str, str] | None, sig: int = signal.SIGTERM) -> None:
    await platform.services["transcript-writer"].stop(sig)
    service = await platform.start("transcript-writer", env=env)
    await platform.wait_healthy(services=[service])


async def test_a_call_yields_signed_started_and_ended_webhooks_with_the_session(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin, receiver
) -> None:
    url, hits = receiver
    await restart_writer(platform, {"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ENDED_DELAY_S": "2"})
    try:
        realtime.scenario = SCENARIO
        call = await dial(
            platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
            from_="+15005550002", to="+15005550006",
        )
        await call.wait_quiet(since=0, timeout=30)
        await call.say("What are your opening hours?")
        await call.wait_quiet(timeout=30)
        await call.hangup()
        sid = call.call_sid

        def mine() -> list[dict[str, Any]]:
            return [h for h in hits if h["data"]["call_sid"] == sid]

        await poll(lambda: {h["type"] for h in mine()} >= {"call.started", "call.ended"}, timeout=30,
                   what="call.started and call.ended webhooks")
        session = await admin.session(sid)
    finally:
        await restart_writer(platform, None)
    started, ended = (next(h for h in mine() if h["type"] == t) for t in ("call.started", "call.ended"))
    assert [h["type"] for h in mine()] == ["call.started", "call.ended"]  # in order, each once
    assert started["id"] != ended["id"] and started["id"].startswith("msg_")
    assert started["data"]["agent"] == "support" and started["data"]["ended_at"] is None
    # call.ended carries the whole session, as the admin API serves it.
    assert ended["data"] == session
    assert [line["text"] for line in session["transcript"]][1] == "What are your opening hours?"
    status, page = await admin.get("/webhooks/deliveries", call=sid)
    assert status == 200
    assert {(d["event_type"], d["status"], len(d["attempts"])) for d in page["items"]} == {
        ("call.started", "delivered", 1), ("call.ended", "delivered", 1)}
