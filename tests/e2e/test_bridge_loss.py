"""Fault suite, scenario 3: a call outlives its bridge.

kill -9 of the realtime-bridge during five calls: each call continues on another bridge, with its
conversation intact (the new bridge restores it from the call's events), or, when no bridge is
left, ends politely (Twilio says sorry and hangs up). The sessions record which.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from dialtone_common.embedded import free_port
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, Admin, poll

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.asyncio(loop_scope="session")]

CALLER = "+15005550001"
SCENARIO = Scenario(turns=[
    Turn(caller="What are your opening hours?", agent="We are open nine to five, Monday to Friday."),
    Turn(caller="And on Saturdays?", agent="On Saturdays we are open until noon."),
    Turn(caller="Thank you, goodbye.", agent="Goodbye!", tools=[ToolCall("set_outcome", {"outcome": "answered"})]),
])


async def _dial(platform: Platform) -> SimCall:
    return await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_=CALLER, to="+15005550006")


async def _first_turn(call: SimCall) -> None:
    await call.wait_quiet(1000, since=0, timeout=60)  # the greeting
    await call.say("What are your opening hours?")
    await call.wait_quiet(1000, timeout=60)


async def _restore_bridges(platform: Platform, *extra: str) -> None:
    """Leave the platform as the other tests expect it: one bridge, the original one."""
    for name in extra:
        if name in platform.services:
            await platform.services.pop(name).stop()
    original = platform.services.get("realtime-bridge")
    if original is None or original.proc.returncode is not None:
        await platform.wait_healthy(services=[await platform.start("realtime-bridge")])


async def test_kill_9_of_the_bridge_moves_its_calls_to_another(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = SCENARIO
    original = platform.services["realtime-bridge"]
    second = "realtime-bridge-2"
    try:
        calls = await asyncio.gather(*(_dial(platform) for _ in range(5)))  # all five on the original bridge
        await asyncio.gather(*(_first_turn(c) for c in calls))
        spare = await platform.start("realtime-bridge", instance=second, env={"METRICS_PORT": str(free_port())})
        await platform.wait_healthy(services=[spare])

        heard_before = [len(c.media_received) for c in calls]
        killed_at = time.monotonic()
        await original.stop(signal.SIGKILL)
        # Each caller hears the agent again (its apology for the gap) from the other bridge.
        for call, seen in zip(calls, heard_before, strict=True):
            await poll(lambda c=call, n=seen: len(c.media_received) > n, 20, what=f"{call.call_sid} to hear the agent again")
        gaps = [round(c.media_received[n][0] - killed_at, 2) for c, n in zip(calls, heard_before, strict=True)]
        print("seconds from kill -9 to the caller hearing the agent again:", gaps)

        await asyncio.gather(*(c.wait_quiet(1000, timeout=60, since=n) for c, n in zip(calls, heard_before, strict=True)))
        await asyncio.gather(*(_finish(c) for c in calls))
        for call in calls:
            session = await admin.session(call.call_sid, timeout=30)
            lines = [(t["role"], t["text"]) for t in session["transcript"]]
            said = [text for role, text in lines if role == "caller"]
            assert said == ["What are your opening hours?", "And on Saturdays?", "Thank you, goodbye."], lines
            replies = [text for role, text in lines if role == "agent"]
            # The new bridge remembered the conversation: the script went on where it was.
            assert replies[1] == "We are open nine to five, Monday to Friday."
            assert "Sorry, the line dropped for a moment. Please go on." in replies
            assert replies[-2:] == ["On Saturdays we are open until noon.", "Goodbye!"]
            assert len(lines) == len(set(lines)), f"a line was stored twice: {lines}"
            statuses = [(h["status"], h["source"]) for h in session["status_history"]]
            assert ("bridge_lost", "gateway") in statuses and ("recovered", "bridge") in statuses
            assert session["end_reason"] == "caller_hangup" and session["outcome"] == "answered"
        # 2.4-2.6 s alone on 2 cores (the lost lease, the offer, the restore, a new model session and
        # its first audio, all CPU of a machine shared with other test workers); up to 5.3 s beside
        # three or four of them on a slow machine. Printed above; bounded at what a caller would
        # still wait for rather than hang up.
        assert max(gaps) < 8.0, gaps
    finally:
        await _restore_bridges(platform, second)


async def _finish(call: SimCall) -> None:
    for line in ("And on Saturdays?", "Thank you, goodbye."):
        await call.say(line)
        await call.wait_quiet(1000, timeout=60)
    await call.hangup()


async def test_with_no_bridge_left_the_caller_hears_an_apology_and_is_hung_up(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = SCENARIO
    try:
        calls = await asyncio.gather(*(_dial(platform) for _ in range(2)))
        await asyncio.gather(*(_first_turn(c) for c in calls))
        await platform.services["realtime-bridge"].stop(signal.SIGKILL)
        for call in calls:
            await call.wait_closed(30)  # Twilio ended the stream: the call left <Connect><Stream>
        for call in calls:
            twiml = twilio_api.calls[call.call_sid].updates[-1]["Twiml"]
            assert "<Say>" in twiml and "technical difficulties" in twiml and "<Hangup" in twiml
            session = await admin.session(call.call_sid, timeout=30)
            assert session["end_reason"] == "bridge_lost"
            assert ("bridge_lost", "gateway") in [(h["status"], h["source"]) for h in session["status_history"]]
            # What was said before the bridge died is kept, once.
            assert [t["role"] for t in session["transcript"]] == ["agent", "caller", "agent"]
    finally:
        await _restore_bridges(platform)


async def test_a_stalled_bridge_that_wakes_leaves_the_call_to_its_replacement(
    platform: Platform, realtime: RealtimeSimulator, twilio_api: FakeTwilioApi, admin: Admin
):
    realtime.scenario = SCENARIO
    original = platform.services["realtime-bridge"]
    second = "realtime-bridge-2"
    try:
        call = await _dial(platform)
        await _first_turn(call)
        spare = await platform.start("realtime-bridge", instance=second, env={"METRICS_PORT": str(free_port())})
        await platform.wait_healthy(services=[spare])
        heard = len(call.media_received)
        original.proc.send_signal(signal.SIGSTOP)  # frozen, not dead: it will wake up believing it holds the call
        try:
            await poll(lambda: len(call.media_received) > heard, 20, what="the other bridge to take the call")
            await call.wait_quiet(1000, timeout=60, since=heard)
        finally:
            original.proc.send_signal(signal.SIGCONT)
        # Awake, the old bridge learns the call is no longer its own: it neither hangs up nor ends it.
        await poll(lambda: "stream stopped (bridge_replaced)" in original.log_path.read_text(), 20,
                   what="the woken bridge to step aside")
        await _finish(call)
        assert not call.closed_by_server
        session = await admin.session(call.call_sid, timeout=30)
        assert session["end_reason"] == "caller_hangup" and session["outcome"] == "answered"
        assert [t["role"] for t in session["transcript"]].count("caller") == 3
        fake = twilio_api.calls.get(call.call_sid)
        assert fake is None or not fake.hung_up  # nobody ended the call through Twilio
    finally:
        original.proc.send_signal(signal.SIGCONT)
        await _restore_bridges(platform, second)
