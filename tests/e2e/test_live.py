"""Acceptance on GPT-Live: an agent with ``engine = "live"`` answers through the GPT-Live simulator,
end to end across the five services, beside the Realtime agents of the same platform."""

from __future__ import annotations

import asyncio
import time

import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.live import LiveSimulator
from dialtone_sim.oracle import check_live_client_event, check_live_server_event
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, LIVE, TEST_AGENTS, Admin

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CALLER = "+15005550001"
GREETING = TEST_AGENTS["live"].split('greeting = "', 1)[1].split('"', 1)[0]
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


async def converse(platform: Platform, lines: list[str], to: str = LIVE) -> SimCall:
    call = await dial(
        platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
        from_=CALLER, to=to,
    )  # fmt: skip
    await call.wait_quiet(since=0, timeout=30)  # the greeting
    for line in lines:
        await call.say(line)
        await call.wait_quiet(timeout=30)
    await call.hangup()
    return call


async def test_three_turn_live_call_yields_one_complete_session(platform: Platform, live: LiveSimulator, admin: Admin):
    live.scenario = SCENARIO
    before = len(live.sessions)
    call = await converse(platform, LINES)
    # The bridge closed the session at once (session.close, then session.closed): it bills while open.
    await asyncio.wait_for(live.sessions[before].closed.wait(), 3.0)
    session = await admin.session(call.call_sid)

    said = [(line["role"], line["text"]) for line in session["transcript"]]
    assert said == [
        ("agent", GREETING),
        ("caller", "Hi, can you look up my account?"),
        ("agent", "I found you, Ada. You are on the Pro plan."),
        ("caller", "What is my balance?"),
        ("agent", "Your balance is zero dollars."),
        ("caller", "Great, that's all, thanks."),
        ("agent", "Glad I could help. Goodbye!"),
    ]
    assert {line["agent"] for line in session["transcript"]} == {"live"}
    assert not any(line["interrupted"] or line["untranscribed"] for line in session["transcript"])

    tools = session["tool_calls"]
    assert [t["name"] for t in tools] == ["lookup_customer", "set_outcome"]
    assert tools[0]["arguments"] == {"phone": CALLER}
    assert tools[0]["ok"] is True and tools[0]["result"]["name"] == "Ada Lovelace"
    assert session["outcome"] == "resolved"

    # The cost: seconds of session at the live model's per-second price (and backend tokens).
    assert float(session["cost_usd"]) > 0
    seconds_usd = session["cost"]["usd"]["other"]
    assert seconds_usd == pytest.approx(session["duration_s"] * 0.05 / 60, rel=0.35)
    assert session["usage"]["input_text_tokens"] > 0  # the backend model's
    # ... priced at the backend model's list prices (gpt-5.4-mini: $0.75 in, $4.50 out per 1M tokens).
    usd, tokens = session["cost"]["usd"], session["cost"]["tokens"]
    assert tokens["text_in"] > 0 and tokens["text_out"] > 0
    assert usd["text_in"] == pytest.approx(tokens["text_in"] * 0.75 / 1e6, rel=0.01)
    assert usd["text_out"] == pytest.approx(tokens["text_out"] * 4.50 / 1e6, rel=0.01)

    # The backend received the tool's real result before the model answered.
    sim = live.sessions[before]
    assert any("Ada Lovelace" in o["output"] for o in sim.tool_outputs)
    assert sim.heard_caller == LINES
    assert len(call.heard) > 8000 * 2


async def test_every_live_client_event_validates_against_the_sdk(platform: Platform, live: LiveSimulator, admin: Admin):
    live.scenario = SCENARIO
    before = len(live.sessions)
    call = await converse(platform, LINES)
    await admin.session(call.call_sid)
    sessions = live.sessions[before:]
    assert len(sessions) == 1
    s = sessions[0]
    assert s.violations == [] and s.server_violations == [] and s.refused_events == []
    # session.start first, with the agent's model, mu-law at 8 kHz, its tools delegated.
    start = s.client_events[0]
    assert start["type"] == "session.start"
    assert start["session"]["model"] == "gpt-live-1.1"
    assert start["session"]["audio"]["format"] == {"type": "audio/pcmu", "rate": 8000}
    delegated = start["session"]["delegation"]["responses"]
    assert delegated["model"] == "gpt-5.4-mini"
    assert {"lookup_customer", "set_outcome", "end_call"} <= {t["name"] for t in delegated["tools"]}
    for event in s.client_events:
        check_live_client_event(event)  # raises on any invalid or extra key
    for event in s.server_events:
        check_live_server_event(event)
    kinds = {e["type"] for e in s.client_events}
    assert {"session.start", "session.commentary.append", "response.item.create", "response.create",
            "session.close"} <= kinds  # fmt: skip
    assert s.appends > 100  # the caller's audio, as it came


async def test_one_platform_serves_a_realtime_and_a_live_agent_at_once(
    platform: Platform, realtime: RealtimeSimulator, live: LiveSimulator, admin: Admin
):
    """The dialled number chooses the agent, and with it the engine; both calls at the same time.
    Also measures first-audio and turn latency of the same simulated call on each engine."""
    live.scenario = SCENARIO
    realtime.scenario = SCENARIO
    live_before, realtime_before = len(live.sessions), len(realtime.sessions)
    started = time.monotonic()
    on_live, on_realtime = await asyncio.gather(
        converse(platform, LINES[1:2], to=LIVE), converse(platform, LINES[1:2], to="+15005550006")
    )
    live_session, realtime_session = await admin.session(on_live.call_sid), await admin.session(on_realtime.call_sid)
    assert {line["agent"] for line in live_session["transcript"]} == {"live"}
    assert {line["agent"] for line in realtime_session["transcript"]} == {"support"}
    assert len(live.sessions) == live_before + 1 and len(realtime.sessions) == realtime_before + 1
    for session in (live_session, realtime_session):
        assert [line["role"] for line in session["transcript"]] == ["agent", "caller", "agent"]
        assert session["transcript"][1]["text"] == "Hi, can you look up my account?"
    for name, session in (("live", live_session), ("realtime", realtime_session)):
        turns = session["turns"]
        cost = session["cost"]
        print(f"\n{name}: first agent audio {session['metrics'].get('first_agent_audio_ms')} ms, "
              f"turns received/sent/heard {[(t['received_ms'], t['sent_ms'], t['heard_ms']) for t in turns]} ms, "
              f"cost ${cost['total_usd']:.4f} over {cost['duration_s']:.1f} s = ${cost['per_minute_usd'] or 0:.4f}/min "
              f"(both calls in {time.monotonic() - started:.1f} s)")  # fmt: skip


async def test_a_handoff_from_a_realtime_agent_to_a_live_agent_reconnects_with_the_history(
    platform: Platform, realtime: RealtimeSimulator, live: LiveSimulator, admin: Admin
):
    """The lab agent (Realtime) hands the call to the live agent: its Realtime session closes, a
    GPT-Live session starts with the conversation so far as input, and the live agent answers."""
    from .conftest import LAB

    realtime.scenario = Scenario(turns=[
        Turn(caller="Put me through to the live desk.", agent="unused", tools=[ToolCall("handoff", {"agent": "live"})]),
    ])  # fmt: skip
    live.scenario = Scenario(turns=[Turn(caller=None, agent="unused"), Turn(caller=None, agent="Live desk here. How can I help?")])
    realtime_before, live_before = len(realtime.sessions), len(live.sessions)
    call = await dial(
        platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
        from_=CALLER, to=LAB,
    )  # fmt: skip
    await call.wait_quiet(since=0, timeout=30)
    await call.say("Put me through to the live desk.")
    await call.wait_quiet(timeout=30)
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert [(a["from_agent"], a["to_agent"]) for a in session["agents"]] == [("lab", "live")]
    assert await_closed(realtime.sessions[realtime_before])
    (s,) = live.sessions[live_before:]
    start = s.client_events[0]["session"]
    assert [(i["role"], i["content"][0]["text"]) for i in start["input"]][-1] == ("user", "Put me through to the live desk.")
    who = [(line["agent"], line["role"], line["text"]) for line in session["transcript"]]
    assert who[0][:2] == ("lab", "agent") and who[1] == ("lab", "caller", "Put me through to the live desk.")
    assert who[-1] == ("live", "agent", "Live desk here. How can I help?")
    assert s.tool_outputs == []  # the handoff call was the Realtime session's, not answered on GPT-Live


def await_closed(session) -> bool:  # noqa: ANN001 - a simulator session of either kind
    return session.closed.is_set()
