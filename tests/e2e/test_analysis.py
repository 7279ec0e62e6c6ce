"""Acceptance of post-call analysis: a simulated call on an agent with an [analysis] table gets a
schema-valid analysis (summary, extracted fields, verdict) from the Responses API simulator,
stored once and shown on the session, in the export, the verdict filter, the search and a
call.analyzed webhook; API errors are retried, then recorded as a failure; a writer killed in the
middle of an analysis does not analyse the call twice.

The module restarts the session's writer with a webhook receiver and short analysis timings, and
restores it afterwards. Every request the simulator receives is checked against the openai SDK's
types (a violation fails the test it happened in)."""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import time
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import jsonschema
import orjson
import pytest
import pytest_asyncio
from dialtone_dev.platform import Platform
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.responses_api import ResponsesSimulator
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_edge import dial

from .conftest import ACCOUNT_SID, ANALYST, AUTH_TOKEN, TEST_AGENTS, Admin
from .test_webhooks import SECRET, restart_writer, webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SCENARIO = Scenario(turns=[Turn(caller="Where is my order A-1234? It has not arrived.",
                                agent="Your order A-1234 ships tomorrow morning.")])
FIELDS_SCHEMA = tomllib.loads(TEST_AGENTS["analyst"])["analysis"]["schema"]
ANALYSIS_ENV = {
    "ANALYSIS_DELAY_S": "0.3", "ANALYSIS_BACKOFF_S": "0.3", "ANALYSIS_MAX_ATTEMPTS": "3",
    "ANALYSIS_ACK_WAIT_S": "3", "WEBHOOK_ENDED_DELAY_S": "0.5",
}  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    async with webhook_receiver() as endpoint:
        yield endpoint


def writer_env(url: str) -> dict[str, str]:
    return {"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, **ANALYSIS_ENV}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def analysing(platform: Platform, receiver) -> AsyncIterator[list[dict[str, Any]]]:
    """The writer with webhooks to the receiver and quick analysis timings, for this module."""
    url, hits = receiver
    await restart_writer(platform, writer_env(url))
    try:
        yield hits
    finally:
        await restart_writer(platform, None)


@pytest.fixture(autouse=True)
def calm(responses_api: ResponsesSimulator) -> None:
    """Each test starts with a simulator that answers at once and in full."""
    responses_api.overrides.clear()
    responses_api.always_fail, responses_api.delay_s = None, 0.0
    responses_api._fail_next.clear()


async def call(platform: Platform, realtime: RealtimeSimulator) -> str:
    """One short call to the analyst agent, hung up by the caller; its call sid."""
    realtime.scenario = SCENARIO
    sim = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                     account_sid=ACCOUNT_SID, from_="+15005550003", to=ANALYST)
    await sim.wait_quiet(since=0, timeout=30)
    await sim.say("Where is my order A-1234? It has not arrived.")
    await sim.wait_quiet(timeout=30)
    await sim.hangup()
    return sim.call_sid


async def analysed(admin: Admin, sid: str, status: str = "done", timeout: float = 40.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        code, body = await admin.get(f"/sessions/{sid}")
        return body if code == 200 and (body.get("analysis") or {}).get("status") == status else None

    return await poll(check, timeout, what=f"analysis of {sid} to be {status}")


async def analyzed_events(database_url: str, sid: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM call_events WHERE call_sid = $1 AND type = 'call.analyzed'", sid)
    finally:
        await conn.close()


async def test_a_call_is_analysed_once_and_shown_on_the_session_export_and_webhook(
    platform: Platform, realtime: RealtimeSimulator, responses_api: ResponsesSimulator, admin: Admin,
    analysing: list[dict[str, Any]], database_url: str,
) -> None:
    before = len(responses_api.requests)
    sid = await call(platform, realtime)
    hung_up = time.monotonic()
    session = await analysed(admin, sid)
    waited = time.monotonic() - hung_up
    analysis = session["analysis"]
    # Schema-valid: the agent's fields, a summary with words of the call, a verdict.
    jsonschema.validate(analysis["fields"], FIELDS_SCHEMA)
    assert set(analysis["fields"]) == {"reason", "order_id", "callback_requested", "sentiment"}
    assert "order" in analysis["summary"].lower()
    assert isinstance(analysis["verdict"]["success"], bool) and analysis["verdict"]["reason"]
    assert analysis["model"] == "gpt-5-mini" and analysis["attempts"] == 1
    # Its cost joins the call's, as the kind "analysis".
    assert analysis["cost_usd"] > 0 and analysis["tokens"]["input"] > 0
    assert session["cost"]["usd"]["analysis"] == pytest.approx(analysis["cost_usd"])
    assert session["cost"]["tokens"]["analysis"] == analysis["tokens"]["input"] + analysis["tokens"]["output"]
    assert session["cost_usd"] >= analysis["cost_usd"]
    # One request, shaped as the SDK's types want (the simulator's verdict fails the test otherwise).
    mine = responses_api.requests[before:]
    assert len(mine) == 1
    request = mine[0]
    assert request["text"]["format"]["type"] == "json_schema" and request["text"]["format"]["strict"] is True
    assert "A-1234" in request["input"]
    jsonschema.validate(orjson.loads(responses_api.answers[-1]["output"][0]["content"][0]["text"]),
                        request["text"]["format"]["schema"])

    # The call.analyzed webhook carries the session with its analysis, once.
    def hooks() -> list[dict[str, Any]]:
        return [h for h in analysing if h["data"]["call_sid"] == sid and h["type"] == "call.analyzed"]

    await poll(lambda: hooks(), timeout=20, what="the call.analyzed webhook")
    await asyncio.sleep(1.0)
    assert len(hooks()) == 1
    assert hooks()[0]["data"]["analysis"] == analysis
    assert await analyzed_events(database_url, sid) == 1

    # The export has the analysis columns, CSV and JSON.
    headers = {"Authorization": f"Bearer {admin.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{admin.url}/sessions/export", params={"format": "csv", "agent": "analyst"}) as r:
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        async with http.get(f"{admin.url}/sessions/export", params={"format": "json", "agent": "analyst"}) as r:
            items = orjson.loads(await r.read())
    row = next(r for r in rows if r["call_sid"] == sid)
    assert row["analysis_status"] == "done" and row["analysis_summary"] == analysis["summary"]
    assert orjson.loads(row["analysis_fields"]) == analysis["fields"]
    item = next(i for i in items if i["call_sid"] == sid)
    assert item["analysis_fields"] == analysis["fields"] and item["analysis_success"] == analysis["verdict"]["success"]
    print(f"\nanalysis: {analysis['latency_ms']:.0f} ms from the call's end to the stored result "
          f"({waited:.1f} s from hang-up to the session showing it); cost ${analysis['cost_usd']:.6f} "
          f"for {analysis['tokens']} tokens")


async def test_the_verdict_filter_and_the_summary_search(
    platform: Platform, realtime: RealtimeSimulator, responses_api: ResponsesSimulator, admin: Admin,
    analysing: list[dict[str, Any]],
) -> None:
    responses_api.overrides.update({"success": False, "summary": "Caller wants a zanzibarquux refund."})
    failed = await call(platform, realtime)
    await analysed(admin, failed)
    responses_api.overrides.clear()
    succeeded = await call(platform, realtime)
    await analysed(admin, succeeded)

    async def sids(**params: str) -> set[str]:
        status, page = await admin.get("/sessions", agent="analyst", limit="200", **params)
        assert status == 200, page
        return {s["call_sid"] for s in page["items"]}

    assert failed in await sids(verdict="failure") and failed not in await sids(verdict="success")
    assert succeeded in await sids(verdict="success") and succeeded not in await sids(verdict="failure")
    assert await sids(q="zanzibarquux") == {failed}  # a word said only in the summary
    status, count = await admin.get("/sessions/count", verdict="failure", q="zanzibarquux")
    assert (status, count["count"]) == (200, 1)
    status, body = await admin.get("/sessions", verdict="maybe")
    assert status == 422


async def test_an_api_error_is_retried_and_the_last_failure_is_recorded(
    platform: Platform, realtime: RealtimeSimulator, responses_api: ResponsesSimulator, admin: Admin,
    analysing: list[dict[str, Any]],
) -> None:
    responses_api.fail_next(1, 500)
    sid = await call(platform, realtime)
    session = await analysed(admin, sid)
    assert session["analysis"]["attempts"] == 2

    responses_api.always_fail = 500
    sid = await call(platform, realtime)
    session = await analysed(admin, sid, status="failed")
    assert session["analysis"]["attempts"] == 3
    assert session["analysis"]["reason"].startswith("HTTP 500")
    assert session["cost"]["usd"]["analysis"] == 0


async def test_a_writer_killed_mid_analysis_analyses_the_call_exactly_once(
    platform: Platform, realtime: RealtimeSimulator, responses_api: ResponsesSimulator, admin: Admin,
    analysing: list[dict[str, Any]], receiver, database_url: str,
) -> None:
    url, _ = receiver
    responses_api.delay_s = 30.0  # the first answer never comes: the writer dies waiting for it
    before = len(responses_api.requests)
    sid = await call(platform, realtime)
    await poll(lambda: len(responses_api.requests) > before, timeout=30, what="the analysis request")
    await restart_writer(platform, writer_env(url), sig=signal.SIGKILL)
    responses_api.delay_s = 0.0
    session = await analysed(admin, sid)
    assert session["analysis"]["attempts"] == 2  # the attempt cut short counts
    assert len(responses_api.requests) - before == 2

    def hooks() -> list[dict[str, Any]]:
        return [h for h in analysing if h["data"]["call_sid"] == sid and h["type"] == "call.analyzed"]

    await poll(lambda: hooks(), timeout=20, what="the call.analyzed webhook")
    await asyncio.sleep(4.0)  # longer than ANALYSIS_ACK_WAIT_S: a redelivery would have shown by now
    assert len(hooks()) == 1
    assert await analyzed_events(database_url, sid) == 1
