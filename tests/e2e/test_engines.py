"""The conversation suite on both engines: every test runs once on an agent of the Realtime engine
and once on the same agent on GPT-Live (conftest's ``desk`` and ``desk-live``), through the whole
platform. What is asserted is what the caller hears and what the session says, which must not
depend on the engine; where the model's side is checked, :class:`Engine` says what each engine's
simulator saw. Realtime-only details (truncation to the millisecond, response races) stay in
test_conversation.py, GPT-Live's own events in test_live.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.live import LiveSimulator
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, DESK, DESK_HANDOFF, DESK_IDLE, TEST_AGENTS, Admin, poll

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CALLER = "+15005550001"
GREETING = TEST_AGENTS["desk"].split('greeting = "', 1)[1].split('"', 1)[0]
FILLER = "One moment, I am still checking that for you."


@dataclass
class Engine:
    """One engine's simulator and desk agents, and what its simulator saw, said neutrally."""

    name: str
    sim: RealtimeSimulator | LiveSimulator

    @property
    def agent(self) -> str:
        return "desk" if self.name == "realtime" else "desk-live"

    @property
    def desk(self) -> str:
        return DESK[self.name]

    @property
    def idle_desk(self) -> str:
        return DESK_IDLE[self.name]

    def script(self, *turns: Turn, fallback: str | None = None) -> int:
        """Give the model its script; the index of the session the next call opens."""
        self.sim.scenario = Scenario(turns=list(turns), **({"fallback_agent": fallback} if fallback else {}))
        return len(self.sim.sessions)

    def session(self, index: int) -> Any:
        return self.sim.sessions[index]

    def texts_given(self, index: int) -> list[str]:
        """What the bridge told the model as text (not as audio): a key pressed."""
        s = self.sim.sessions[index]
        if isinstance(self.sim, RealtimeSimulator):
            return list(s.text_inputs)
        return [c for c in s.commentary if "exactly:" not in c]

    def model_said(self, index: int) -> str:
        """Everything the model has said so far on this session, as its transcript gave it."""
        s = self.sim.sessions[index]
        if isinstance(self.sim, RealtimeSimulator):
            kinds = ("response.output_audio_transcript.done",)
            return " ".join(e["transcript"] for e in s.server_events if e["type"] in kinds)
        return "".join(e["delta"] for e in s.server_events if e["type"] == "session.output_transcript.delta")

    def tool_outputs(self, index: int) -> list[str]:
        return [o["output"] for o in self.sim.sessions[index].tool_outputs]

    def assert_valid(self, index: int) -> None:
        """The simulator's own verdicts: no protocol violation on this session."""
        s = self.sim.sessions[index]
        assert s.violations == [], s.violations
        assert getattr(s, "server_violations", []) == []
        assert getattr(s, "refused_events", []) == []


@pytest.fixture(params=["realtime", "live"])
def engine(request: pytest.FixtureRequest, realtime: RealtimeSimulator, live: LiveSimulator) -> Engine:
    return Engine(request.param, realtime if request.param == "realtime" else live)


async def inbound(platform: Platform, twilio_api: FakeTwilioApi, to: str, **kwargs: Any) -> SimCall:
    """An inbound call that Twilio's REST API knows about (so it can be hung up or redirected)."""
    known = twilio_api.add_call(to, CALLER, status_callback=f"{platform.public_base_url}/twilio-status")
    return await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, call_sid=known.sid, from_=CALLER, to=to, **kwargs)  # fmt: skip


def said(session: dict[str, Any]) -> list[tuple[str, str]]:
    return [(line["role"], line["text"]) for line in session["transcript"]]


async def test_the_agent_greets_first_and_the_time_to_first_audio_is_recorded(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script()
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)  # the caller says nothing at all
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert said(session) == [("agent", GREETING)]
    assert session["agent"] == engine.agent
    greeting = session["transcript"][0]
    assert not greeting["interrupted"] and greeting["heard_ms"] == pytest.approx(greeting["audio_ms"], abs=250)
    assert len(call.heard) >= greeting["audio_ms"] * 8 * 0.9  # 8 bytes of mu-law per ms, all of it heard
    assert 0 < session["metrics"]["first_agent_audio_ms"] < 5000
    engine.assert_valid(index)


async def test_barge_in_cuts_the_line_where_the_caller_was(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script(Turn(caller="Sorry, I need billing.", agent="Of course, one moment."))
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_heard(1200)  # 1.2 s into the greeting
    await call.say("Sorry, I need billing.")
    await call.wait_quiet(timeout=30)
    await call.hangup()
    session = await admin.session(call.call_sid)
    greeting = session["transcript"][0]
    assert greeting["role"] == "agent" and greeting["interrupted"]
    # The caller heard 1.2 s of the greeting before cutting in, and the agent stopped within a
    # second of it (the greeting runs for about 6 s): the line holds what was heard.
    print(f"\n{engine.name}: greeting heard {greeting['heard_ms']} of {greeting['audio_ms']} ms generated")
    assert 1200 <= greeting["heard_ms"] <= 2200 and greeting["heard_ms"] <= greeting["audio_ms"]
    assert len(call.heard) <= (2200 + 5000) * 8  # the greeting's rest never played (the answer is < 5 s)
    assert GREETING.startswith(greeting["text"]) and len(greeting["text"]) < len(GREETING)
    if engine.name == "realtime":  # the model streams ahead of real time: Twilio's buffer is cleared
        assert len(call.clears) >= 1
    # (GPT-Live paces its audio: by the time it has yielded, 0.2 s without voice while talked over,
    # Twilio has usually played the little it held; whatever is left is cleared the same way.)
    assert said(session)[1:] == [("caller", "Sorry, I need billing."), ("agent", "Of course, one moment.")]
    engine.assert_valid(index)


async def test_a_slow_tool_gets_the_filler_then_the_answer(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script(
        Turn(caller="Can I have my report?", agent="Your report is ready.", tools=[ToolCall("slow_report", {"seconds": 3})])
    )
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("Can I have my report?")
    heard_before = len(call.media_received)
    await poll(lambda: engine.tool_outputs(index), timeout=15, what="the tool's result at the model")
    assert len(call.media_received) > heard_before  # the filler came while the tool ran
    await poll(lambda: "Your report is ready." in engine.model_said(index), timeout=15, what="the answer")
    await call.wait_quiet(since=heard_before, timeout=20)  # the answer, played out
    await call.hangup()
    session = await admin.session(call.call_sid)
    agent_lines = [line for line in session["transcript"] if line["role"] == "agent"]
    assert [line["text"] for line in agent_lines[-2:]] == [FILLER, "Your report is ready."]
    filler, answer = agent_lines[-2:]
    assert filler["heard_ms"] > 0 and answer["heard_ms"] > 0  # both were heard, the filler first
    assert filler["offset_ms"] < answer["offset_ms"]
    (tool,) = session["tool_calls"]
    assert tool["name"] == "slow_report" and tool["ok"] and tool["duration_ms"] >= 3000
    assert any("ready" in output for output in engine.tool_outputs(index))
    # The filler is kept out of what the model remembers (Realtime: an out-of-band response;
    # GPT-Live: commentary to say it word for word).
    sim = engine.session(index)
    if engine.name == "realtime":
        assert any(e.get("response", {}).get("conversation") == "none" for e in sim.client_events
                   if e["type"] == "response.create")  # fmt: skip
    else:
        assert f'exactly: "{FILLER}"' in " ".join(sim.commentary)
    engine.assert_valid(index)


async def test_a_silent_caller_is_prompted_then_told_goodbye_and_hung_up(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script()
    call = await inbound(platform, twilio_api, engine.idle_desk)
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: fake.hung_up, timeout=40, interval=0.005, what="the idle hang-up")
    goodbye_heard = len(call.heard)
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert [text for _, text in said(session)] == [
        "Hi, front desk.", "Are you still there?", "Are you still there?", "It seems you have stepped away. Goodbye!",
    ]  # fmt: skip
    assert session["end_reason"] == "caller_idle"
    goodbye = session["transcript"][-1]
    assert goodbye["heard_ms"] >= goodbye["audio_ms"] - 100  # the whole goodbye before the hang-up
    assert goodbye_heard > 0
    engine.assert_valid(index)


async def test_a_key_press_reaches_the_model_as_text_and_the_transcript(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script(Turn(caller=None, agent="You chose billing."))
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)
    await call.press("1")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    assert engine.texts_given(index) == ["The caller pressed 1 on the keypad."]
    session = await admin.session(call.call_sid)
    lines = [(line["role"], line["text"], line["source"]) for line in session["transcript"]]
    assert lines[-2:] == [("caller", "pressed 1", "dtmf"), ("agent", "You chose billing.", "speech")]
    engine.assert_valid(index)


async def test_end_call_hangs_up_only_after_the_goodbye_was_heard(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script(
        Turn(caller="That's all, bye.", agent="Goodbye, and have a lovely day!", tools=[ToolCall("end_call", {})])
    )
    call = await inbound(platform, twilio_api, engine.desk, one_way_delay_ms=40)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("That's all, bye.")
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: fake.hung_up, timeout=20, interval=0.005, what="the REST hang-up")
    assert fake.updates[-1].get("Status") == "completed"
    await call.wait_closed(timeout=10)  # the bridge also closed the stream
    session = await admin.session(call.call_sid)
    assert session["end_reason"] == "agent_ended"
    goodbye = session["transcript"][-1]
    assert goodbye["text"] == "Goodbye, and have a lovely day!" and not goodbye["interrupted"]
    assert goodbye["heard_ms"] >= goodbye["audio_ms"] - 100  # heard to the end before the hang-up
    engine.assert_valid(index)


async def test_transfer_dials_the_agents_human_number(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script(
        Turn(caller="I want to speak to a person.", agent="Transferring you now.",
             preamble="Of course, let me transfer you.", tools=[ToolCall("transfer_call", {"reason": "caller asked"})]),
    )  # fmt: skip
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("I want to speak to a person.")
    fake = twilio_api.calls[call.call_sid]
    await poll(lambda: any("Twiml" in u for u in fake.updates), timeout=20, what="the REST redirect")
    assert "<Dial>+15005550010</Dial>" in fake.updates[-1]["Twiml"]
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert session["transferred_to"] == "+15005550010" and session["status"] == "transferred"
    # The caller's words before the transfer are in the transcript (their text came after it), and
    # so are the agent's, said with the tool call and heard in full before the redirect.
    assert said(session) == [("agent", GREETING), ("caller", "I want to speak to a person."),
                             ("agent", "Of course, let me transfer you.")]  # fmt: skip
    assert not session["transcript"][-1]["interrupted"]
    engine.assert_valid(index)


async def test_voicemail_gets_the_agents_message_then_a_hang_up(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    index = engine.script()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin.token}"}) as http:
        body = {"to": "+15005550123", "from": "+15005550100", "agent": engine.agent}
        async with http.post(f"{admin.url}/calls", json=body) as r:
            assert r.status == 201, await r.text()
            placed = await r.json()
    fake = twilio_api.calls[placed["call_sid"]]
    for status in ("initiated", "ringing", "in-progress"):
        await twilio_api.post_status(placed["call_sid"], status)
    url = urlsplit(fake.url)
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, call_sid=placed["call_sid"], from_=fake.from_, to=fake.to,
                      webhook_path=f"{url.path}?{url.query}",
                      extra_params={"Direction": "outbound-api", "AnsweredBy": "machine_end_beep"})  # fmt: skip
    await poll(lambda: fake.hung_up, timeout=30, what="the hang-up after the voicemail")
    await call.hangup()
    session = await admin.session(placed["call_sid"])
    assert session["answered_by"] == "machine_end_beep" and session["agent"] == engine.agent
    assert said(session) == [("agent", "Hi, this is the Acme front desk returning your call. Goodbye.")]
    assert session["end_reason"] == "voicemail_left"
    assert len(call.heard) > 8000  # the message was played, not only written
    engine.assert_valid(index)


async def test_a_handoff_moves_the_call_to_another_agent_on_the_same_engine(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin
):
    target = DESK_HANDOFF[engine.name]
    answer = "Billing here. Which charge is it?"
    turns = [Turn(caller="I have a question about a charge.", agent=answer, tools=[ToolCall("handoff", {"agent": target})])]
    if engine.name == "live":  # a GPT-Live session's instructions are fixed at its start: the new
        turns.append(Turn(caller=None, agent=answer))  # agent's session goes on with the next turn
    index = engine.script(*turns)
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("I have a question about a charge.")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    session = await admin.session(call.call_sid)
    assert [(a["from_agent"], a["to_agent"]) for a in session["agents"]] == [(engine.agent, target)]
    who = [(line["agent"], line["role"], line["text"]) for line in session["transcript"]]
    assert who[0][:2] == (engine.agent, "agent") and who[1] == (engine.agent, "caller", "I have a question about a charge.")
    assert who[-1] == (target, "agent", answer)
    if engine.name == "realtime":  # the same connection, updated with the new agent's instructions
        assert len(engine.sim.sessions) == index + 1
        updates = [e["session"] for e in engine.session(index).client_events if e["type"] == "session.update"]
        assert len(updates) == 2 and "billing specialist" in updates[-1]["instructions"]
        assert {t["name"] for t in updates[1]["tools"]} != {t["name"] for t in updates[0]["tools"]}
        for fmt in (updates[1]["audio"]["input"]["format"], updates[1]["audio"]["output"]["format"],
                    engine.session(index).session["audio"]["output"]["format"]):  # fmt: skip
            assert fmt == {"type": "audio/pcmu"}  # still mu-law at the model
        engine.assert_valid(index)
    else:  # a new session for the new agent, started with the conversation so far
        assert len(engine.sim.sessions) == index + 2 and engine.session(index).closed.is_set()
        start = engine.session(index + 1).client_events[0]["session"]
        assert "desk-billing-live test agent" in start["instructions"]
        assert start["input"][-1]["content"][0]["text"] == "I have a question about a charge."
        engine.assert_valid(index + 1)


@pytest.mark.parametrize("how", ["expired", "network_drop"])
async def test_a_lost_model_socket_reconnects_with_the_conversation_so_far(
    platform: Platform, engine: Engine, twilio_api: FakeTwilioApi, admin: Admin, how: str
):
    index = engine.script(
        Turn(caller="My name is Ada.", agent="Nice to meet you, Ada."),
        Turn(caller="What did I say my name was?", agent="You said Ada."),
    )
    call = await inbound(platform, twilio_api, engine.desk)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("My name is Ada.")
    await call.wait_quiet(timeout=20)
    first = engine.session(index)
    if how == "expired":
        await first.expire()
    else:
        await engine.sim.drop(first)
    await poll(lambda: len(engine.sim.sessions) > index + 1, timeout=10, what="a new model session")
    await call.say("What did I say my name was?")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    second = engine.session(index + 1)
    if engine.name == "realtime":
        restored = [c.get("text") for e in second.client_events if e["type"] == "conversation.item.create"
                    for c in e["item"]["content"]]  # fmt: skip
        instructions = [[e["session"]["instructions"] for e in s.client_events if e["type"] == "session.update"][0]
                        for s in (first, second)]  # fmt: skip
        assert instructions[0] == instructions[1]  # the same agent on the new socket
    else:
        restored = [i["content"][0]["text"] for i in second.client_events[0]["session"]["input"]]
    assert "My name is Ada." in restored and "Nice to meet you, Ada." in restored
    session = await admin.session(call.call_sid)
    assert said(session)[-4:] == [
        ("caller", "My name is Ada."), ("agent", "Nice to meet you, Ada."),
        ("caller", "What did I say my name was?"), ("agent", "You said Ada."),
    ]  # fmt: skip
    assert session["end_reason"] == "caller_hangup"
    assert not any("line dropped" in text.lower() for _, text in said(session))
    engine.assert_valid(index + 1)
