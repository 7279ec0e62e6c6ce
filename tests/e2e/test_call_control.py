"""Call control: hang-ups and transfers through Twilio REST, limits, status callbacks, outbound
calls with answering-machine detection, agents chosen by number, handoffs between agents."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, BRIEF, Admin, poll

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
