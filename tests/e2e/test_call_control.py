"""Call control: hang-ups and transfers through Twilio REST, limits, status callbacks, outbound
calls with answering-machine detection, agents chosen by number, handoffs between agents."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, BRIEF, QUICK, Admin, poll

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SUPPORT = "+15005550006"
BILLING = "+15005550007"


async def inbound(platform: Platform, twilio_api: FakeTwilioApi, to: str, **kwargs) -> SimCall:
    """An inbound call that Twilio's REST API knows about (so it can be hung up or redirected)."""
    known = twilio_api.add_call(to, "+15005550001", status_callback=f"{platform.public_base_url}/twilio-status")
    return await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, call_sid=known.sid, from_="+15005550001", to=to, **kwargs)


def heard_all(call: SimCall, realtime: RealtimeSimulator, session_index: int, item: int = -1) -> bool:
    s = realtime.sessions[session_index]
    audio = bytes(s.output_audio[s.output_order[item]])
    return bytes(call.heard).find(audio) >= 0


async def test_end_call_hangs_up_through_rest_after_the_goodbye_played(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[
        Turn(caller="That's all, bye.", agent="Goodbye, and have a lovely day!", tools=[ToolCall("end_call", {})]),
    ])
    before = len(realtime.sessions)
    call = await inbound(platform, twilio_api, SUPPORT, one_way_delay_ms=40)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("That's all, bye.")
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: fake.hung_up, timeout=20, interval=0.005, what="the REST hang-up")
    # At the moment of the hang-up the caller had already heard the whole goodbye.
    assert heard_all(call, realtime, before)
    assert fake.updates[-1].get("Status") == "completed"
    await call.wait_closed(timeout=10)  # the bridge also closed the stream
    session = await admin.session(call.call_sid)
    assert session["end_reason"] == "agent_ended"
    assert session["transcript"][-1]["text"] == "Goodbye, and have a lovely day!"


async def test_transfer_call_dials_the_agents_human_number(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[
        Turn(caller="I want to speak to a person.", agent="Transferring you now.",
             tools=[ToolCall("transfer_call", {"reason": "caller asked"})]),
    ])
    call = await inbound(platform, twilio_api, SUPPORT)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("I want to speak to a person.")
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: any("Twiml" in u for u in fake.updates), timeout=20, what="the REST redirect")
    assert "<Dial>+15005550010</Dial>" in fake.updates[-1]["Twiml"]
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert session["transferred_to"] == "+15005550010"
    assert session["status"] == "transferred"


async def test_silent_caller_is_prompted_then_the_agent_says_goodbye_and_hangs_up(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    call = await inbound(platform, twilio_api, QUICK)
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: fake.hung_up, timeout=40, what="the idle hang-up")  # the caller never speaks
    await call.hangup()
    session = await admin.session(call.call_sid)
    said = [line["text"] for line in session["transcript"]]
    assert said == ["Hi, quick line.", "Are you still there?", "Are you still there?",
                    "It seems you have stepped away. Goodbye!"]
    assert session["end_reason"] == "caller_idle"


async def test_maximum_duration_ends_the_call_politely(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[], fallback_agent="Let me tell you about our many products and services.")
    before = len(realtime.sessions)
    call = await inbound(platform, twilio_api, BRIEF)
    await call.wait_quiet(since=0, timeout=20)
    await call.say("Tell me everything.")
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: fake.hung_up, timeout=30, interval=0.005, what="the time-limit hang-up")
    assert heard_all(call, realtime, before)  # the goodbye played before the hang-up
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert session["transcript"][-1]["text"] == "We have reached our time limit for this call. Goodbye!"
    assert session["end_reason"] == "max_duration"


async def test_status_callbacks_are_recorded_and_checked(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    call = await inbound(platform, twilio_api, SUPPORT)
    await call.wait_quiet(since=0, timeout=20)
    for status in ("ringing", "in-progress"):
        assert await twilio_api.post_status(call.call_sid, status) == 204
    await call.hangup()
    assert await twilio_api.post_status(call.call_sid, "completed", CallDuration="7") == 204
    # An unsigned callback is refused.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{platform.gateway_url}/twilio-status",
                             data={"CallSid": call.call_sid, "CallStatus": "failed"}) as r:
            assert r.status == 403

    async def completed():
        session = await admin.session(call.call_sid)
        return session if [h["status"] for h in session["status_history"] if h["source"] == "twilio"] == [
            "ringing", "in-progress", "completed"] else None

    session = await poll(completed, timeout=20, what="the status history")
    assert session["status"] == "completed"


async def test_a_media_socket_that_vanishes_still_ends_the_call(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    call = await inbound(platform, twilio_api, SUPPORT)
    await call.wait_quiet(since=0, timeout=20)
    call._ws.transport.abort()  # no stop message, no close frame: the network just went away
    session = await admin.session(call.call_sid)
    assert session["end_reason"] == "stream_closed"
    assert session["status"] == "completed"
    await call.hangup()


async def place_outbound(platform: Platform, admin: Admin, agent: str, **variables: str) -> dict:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin.token}"}) as http:
        async with http.post(f"{admin.url}/calls", json={"to": "+15005550123", "from": "+15005550100",
                                                         "agent": agent, "variables": variables}) as r:
            assert r.status == 201, await r.text()
            return await r.json()


async def answer(platform: Platform, twilio_api: FakeTwilioApi, call_sid: str, answered_by: str) -> SimCall:
    """Do what Twilio does when the callee answers: status callbacks, then fetch the voice URL with
    AnsweredBy (synchronous AMD), then open the stream."""
    fake = twilio_api.calls[call_sid]
    for status in ("initiated", "ringing", "in-progress"):
        await twilio_api.post_status(call_sid, status)
    url = urlsplit(fake.url)
    return await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, call_sid=call_sid, from_=fake.from_, to=fake.to,
                      webhook_path=f"{url.path}?{url.query}",
                      extra_params={"Direction": "outbound-api", "AnsweredBy": answered_by})


async def test_outbound_call_shows_direction_status_progression_and_answered_by(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[Turn(caller="Hello?", agent="Hi Ada, this is Acme calling about your order.")])
    placed = await place_outbound(platform, admin, "support", name="Ada")
    fake = twilio_api.calls[placed["call_sid"]]
    assert fake.machine_detection == "Enable" and "agent=support" in fake.url and "v_name=Ada" in fake.url
    call = await answer(platform, twilio_api, placed["call_sid"], "human")
    await call.wait_quiet(since=0, timeout=20)
    await call.say("Hello?")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    await twilio_api.post_status(placed["call_sid"], "completed", CallDuration="9")

    async def completed():
        session = await admin.session(placed["call_sid"])
        statuses = [h["status"] for h in session["status_history"] if h["source"] == "twilio"]
        return session if statuses == ["initiated", "ringing", "in-progress", "completed"] else None

    session = await poll(completed, timeout=20, what="the status progression")
    assert session["direction"] == "outbound"
    assert session["answered_by"] == "human"
    assert session["transcript"][-1]["text"] == "Hi Ada, this is Acme calling about your order."


async def test_voicemail_gets_the_agents_message_then_a_hang_up(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    placed = await place_outbound(platform, admin, "support")
    call = await answer(platform, twilio_api, placed["call_sid"], "machine_end_beep")
    fake = twilio_api.calls[placed["call_sid"]]
    await poll(lambda: fake.hung_up, timeout=30, what="the hang-up after the voicemail")
    await call.hangup()
    session = await admin.session(placed["call_sid"])
    assert session["answered_by"] == "machine_end_beep"
    assert [line["text"] for line in session["transcript"]] == [
        "Hi, this is Acme support returning your call. Please call us back at your convenience. Goodbye."]
    assert session["end_reason"] == "voicemail_left"


async def test_voicemail_with_a_hang_up_agent_hangs_up_at_once(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    placed = await place_outbound(platform, admin, "answerphone")
    call = await answer(platform, twilio_api, placed["call_sid"], "machine_start")
    fake = twilio_api.calls[placed["call_sid"]]
    await poll(lambda: fake.hung_up, timeout=20, what="the hang-up")
    await call.hangup()
    session = await admin.session(placed["call_sid"])
    assert session["transcript"] == [] and len(call.heard) == 0
    assert session["end_reason"] == "voicemail_hangup"


async def test_the_dialled_number_chooses_the_agent(platform: Platform, realtime: RealtimeSimulator, admin: Admin):
    realtime.scenario = Scenario(turns=[Turn(caller="Hi.", agent="Billing, how can I help?")])
    before = len(realtime.sessions)
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, to=BILLING)
    await call.say("Hi.")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert session["agent"] == "billing"
    update = realtime.sessions[before].client_events[0]
    assert update["type"] == "session.update" and "billing specialist" in update["session"]["instructions"]


async def test_handoff_swaps_instructions_and_tools_keeping_formats(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = Scenario(turns=[
        Turn(caller="I have a question about a charge.", agent="Billing here. Which charge is it?",
             tools=[ToolCall("handoff", {"agent": "billing"})]),
    ])
    before = len(realtime.sessions)
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, to=SUPPORT)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("I have a question about a charge.")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    s = realtime.sessions[before]
    updates = [e["session"] for e in s.client_events if e["type"] == "session.update"]
    assert len(updates) == 2
    assert "billing specialist" in updates[1]["instructions"]
    assert {t["name"] for t in updates[1]["tools"]} != {t["name"] for t in updates[0]["tools"]}
    assert updates[1]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert updates[1]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert s.session["audio"]["output"]["format"] == {"type": "audio/pcmu"}  # still mu-law at the model
    session = await admin.session(call.call_sid)
    who = [(line["agent"], line["text"]) for line in session["transcript"]]
    assert who[0][0] == "support" and who[-1] == ("billing", "Billing here. Which charge is it?")
    assert [(a["from_agent"], a["to_agent"]) for a in session["agents"]] == [("support", "billing")]
