"""Acceptance: a phone call works end to end across the five services."""

from __future__ import annotations

import asyncio

import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.oracle import check_client_event, check_server_event
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.realtime_session import RACES
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_edge import dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, Admin

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CALLER = "+15005550001"

SCENARIO = Scenario(
    turns=[
        Turn(
            caller="Hi, can you look up my account?",
            agent="I found you, Ada. You are on the Pro plan.",
            tools=[ToolCall("lookup_customer", {"phone": CALLER})],
        ),
        Turn(caller="What is my balance?", agent="Your balance is zero dollars."),
        Turn(
            caller="Great, that's all, thanks.",
            agent="Glad I could help. Goodbye!",
            tools=[ToolCall("set_outcome", {"outcome": "resolved", "detail": "balance given"})],
        ),
    ]
)
LINES = ["Hi, can you look up my account?", "What is my balance?", "Great, that's all, thanks."]


async def converse(platform: Platform, lines: list[str], **kwargs):
    call = await dial(
        platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
        from_=CALLER, to="+15005550006", **kwargs,
    )
    await call.wait_quiet(since=0, timeout=30)  # the greeting
    for line in lines:
        await call.say(line)
        await call.wait_quiet(timeout=30)
    await call.hangup()
    return call


async def test_three_turn_call_yields_one_complete_session(platform: Platform, realtime: RealtimeSimulator, admin: Admin):
    realtime.scenario = SCENARIO
    before = len(realtime.sessions)
    call = await converse(platform, LINES)
    # The simulated Twilio offered permessage-deflate, as WebSocket clients do; the gateway declined
    # (compressing 20 ms of base64 mu-law costs CPU for nothing).
    assert call._ws.protocol.extensions == []
    # The bridge closed the model's socket as soon as the caller hung up (it bills while open).
    await asyncio.wait_for(realtime.sessions[before].closed.wait(), 1.0)
    session = await admin.session(call.call_sid)

    # One session for the call, listed by GET /sessions.
    status, listing = await admin.get("/sessions", limit=50)
    assert status == 200
    assert [s["call_sid"] for s in listing["items"]].count(call.call_sid) == 1

    # Both sides' lines, in conversation order.
    said = [(line["role"], line["text"]) for line in session["transcript"]]
    assert said == [
        ("agent", "Thanks for calling Acme support, this is Marin. How can I help you today?"),
        ("caller", "Hi, can you look up my account?"),
        ("agent", "I found you, Ada. You are on the Pro plan."),
        ("caller", "What is my balance?"),
        ("agent", "Your balance is zero dollars."),
        ("caller", "Great, that's all, thanks."),
        ("agent", "Glad I could help. Goodbye!"),
    ]
    assert [line["seq"] for line in session["transcript"]] == sorted(line["seq"] for line in session["transcript"])
    assert {line["agent"] for line in session["transcript"]} == {"support"}

    # The tool calls with their arguments and results, lookup first, then the outcome.
    tools = session["tool_calls"]
    assert [t["name"] for t in tools] == ["lookup_customer", "set_outcome"]
    assert tools[0]["arguments"] == {"phone": CALLER}
    assert tools[0]["ok"] is True and tools[0]["result"]["name"] == "Ada Lovelace"
    assert tools[1]["arguments"]["outcome"] == "resolved"
    assert session["outcome"] == "resolved"

    # Start and end times, and usage summed from the model's responses.
    assert session["started_at"] and session["ended_at"] and session["ended_at"] > session["started_at"]
    assert session["usage"]["output_tokens"] > 0 and float(session["cost_usd"]) > 0

    # Three turns, each timed by stage from the caller's stop: the model's first audio received,
    # sent towards Twilio, heard; in that order, and summarised as the call's latency.
    turns = session["turns"]
    assert len(turns) == 3
    for t in turns:
        assert 0 < t["received_ms"] <= t["sent_ms"] <= t["heard_ms"], t
    assert session["latency"]["received_p50"] is not None and session["latency"]["turns"] == 3

    # The model received the tool's real result before speaking again.
    sim_session = realtime.sessions[before]
    outputs = [o["output"] for o in sim_session.tool_outputs]
    assert any("Ada Lovelace" in o for o in outputs)
    # The caller heard the agent: the greeting and three replies.
    assert len(call.heard) > 8000 * 2


async def test_every_realtime_event_validates_against_the_sdk(platform: Platform, realtime: RealtimeSimulator, admin: Admin):
    realtime.scenario = SCENARIO
    before = len(realtime.sessions)
    call = await converse(platform, LINES)
    await admin.session(call.call_sid)
    sessions = realtime.sessions[before:]
    assert sessions, "the bridge opened no Realtime session"
    kinds = set()
    for s in sessions:
        assert s.violations == []
        assert s.server_violations == []
        # Nothing was refused but the races server VAD makes unavoidable.
        assert [(e.get("type"), err["code"]) for e, err in s.refused_events if err["code"] not in RACES] == []
        for event in s.client_events:  # what the model accepted
            check_client_event(event)  # raises on any invalid or extra key
            kinds.add(event["type"])
        for event in s.server_events:
            check_server_event(event)
    # The model accepted every event a phone bridge sends.
    assert {"session.update", "input_audio_buffer.append", "conversation.item.create", "response.create"} <= kinds
