"""The GPT-Live engine's edge: every client event it builds is one GPT-Live accepts (the SDK's
``openai.types.live`` as oracle), and its server events become the right engine-neutral events,
turn by turn (time passed in, no sockets); then one connection against the GPT-Live simulator."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import orjson
import pytest
from dialtone_bridge import live_engine as lv
from dialtone_bridge import pricing
from dialtone_bridge.agents import Agent, load_agent
from dialtone_bridge.engine import (
    AgentAudio,
    AgentAudioDone,
    AgentText,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerText,
    Closed,
    EngineError,
    HistoryLine,
    ReplyFinished,
    ReplyStarted,
    SessionSpec,
    TextSpan,
    ToolCallRequested,
    UsageUpdated,
)
from dialtone_bridge.settings import DEFAULT_PRICES
from dialtone_proto.tools import ToolSpec
from dialtone_sim.live import LiveSimulator
from dialtone_sim.oracle import OracleError, check_live_client_event, check_live_server_event
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.speech import synthesize

pytestmark = pytest.mark.unit

TOOLS = [
    ToolSpec(name="lookup_customer", description="Find the caller's account by phone number.",
             parameters={"type": "object", "properties": {"phone": {"type": "string"}}, "required": ["phone"]},
             timeout_s=5),
    ToolSpec(name="set_outcome", description="Record the outcome.",
             parameters={"type": "object", "properties": {"outcome": {"type": "string"}}}, timeout_s=2),
]  # fmt: skip
AGENT = Agent(name="live", instructions="You are Acme's agent.", engine="live", backend_instructions="Look callers up.")
SPEC = SessionSpec(AGENT, TOOLS, "marin")
VOICED = synthesize("Hello there, how can I help?", 3)[:800]
SILENT = b"\xff" * 800


def _valid(text: str) -> dict:
    event = orjson.loads(text)
    check_live_client_event(event)
    return event


# ---- client events ---------------------------------------------------------------------------


def test_session_start_is_valid_and_carries_the_agent() -> None:
    event = _valid(lv.session_start(SPEC, "gpt-live-1.1", [HistoryLine("caller", "Hi"), HistoryLine("agent", "Hello")]))
    session = event["session"]
    assert session["model"] == "gpt-live-1.1"
    assert session["audio"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}}
    backend = session["delegation"]["responses"]
    assert backend["model"] == "gpt-5.4-mini" and backend["instructions"] == "Look callers up."
    assert [t["name"] for t in backend["tools"]] == ["lookup_customer", "set_outcome"]
    assert [i["role"] for i in session["input"]] == ["user", "assistant"]


def test_a_live_agent_folder_loads(tmp_path: Path) -> None:
    folder = tmp_path / "livey"
    folder.mkdir()
    (folder / "agent.toml").write_text('engine = "live"\nlive_model = "gpt-live-1"\nbackend_model = "gpt-5.5"\n')
    (folder / "system.md").write_text("Be brief.")
    agent = load_agent(folder)
    assert (agent.engine, agent.live_model, agent.backend_model, agent.backend_instructions) == ("live", "gpt-live-1", "gpt-5.5", None)
    backend = _valid(lv.session_start(SessionSpec(agent, [], "cedar"), agent.live_model))["session"]["delegation"]
    assert backend["responses"]["instructions"] == "Be brief." and "tools" not in backend["responses"]
    (folder / "agent.toml").write_text('engine = "gemini"\n')
    with pytest.raises(ValueError, match="engine"):
        load_agent(folder)


def test_every_command_is_a_valid_client_event() -> None:
    _valid(lv.append(b"\xff" * 160))
    assert _valid(lv.commentary("Greet the caller.", "dt_req_1"))["delegation_id"] is None
    out = _valid(lv.function_output("call_1", {"name": "Ada"}))
    assert out["item"] == {"type": "function_call_output", "call_id": "call_1", "output": '{"name":"Ada"}'}
    _valid(lv.response_create("dt_req_2"))
    _valid(lv.session_update(SPEC))
    _valid(lv.session_update(SessionSpec(AGENT, [], "marin")))
    _valid(lv.SESSION_CLOSE)
    with pytest.raises(OracleError):  # the oracle does reject what GPT-Live would
        check_live_client_event({"type": "session.commentary.append", "content": "x", "delegation_id": None, "voice": "x"})


def test_history_keeps_the_newest_lines_within_the_limits() -> None:
    many = [HistoryLine("caller" if n % 2 else "agent", f"line {n}") for n in range(300)]
    items = lv.history_input(many)
    assert len(items) == lv.HISTORY_MESSAGES
    assert items[-1]["content"][0]["text"] == "line 299" and items[0]["content"][0]["text"] == "line 172"
    long = [HistoryLine("caller", "word " * 2000) for _ in range(10)]  # ~2,500 tokens each
    assert len(lv.history_input(long)) == 3
    assert lv.history_input([HistoryLine("caller", "  ")]) == []


# ---- server events, turn by turn ---------------------------------------------------------------


def _audio(chunk: bytes) -> dict:
    return {"type": "session.output_audio.delta", "delta": base64.b64encode(chunk).decode()}


def _said(text: str, at: int = 0) -> dict:
    return {"type": "session.output_transcript.delta", "event_id": "e", "delta": text, "start_ms": at, "end_ms": at + 100}


def _heard(text: str, at: int) -> dict:
    return {"type": "session.input_transcript.delta", "event_id": "e", "delta": text, "start_ms": at, "end_ms": at + 200}


def _run(turns: lv.LiveTurns, script: list[tuple[float, dict | None]]) -> list:
    """Feed (time, event) pairs (None: only the clock moves) and collect what comes out."""
    out = []
    for now, event in script:
        if event is not None:
            check_live_server_event(event if "event_id" in event or event["type"].endswith("audio.delta")
                                    else {"event_id": "e", **event})  # fmt: skip
            out += turns.event(event, now)
        out += turns.tick(now)
    return out


def test_a_reply_is_voiced_audio_until_a_gap_and_its_silence_is_not_played_at_the_ends() -> None:
    turns = lv.LiveTurns("t", 0.8, "gpt-5.4-mini")
    out = _run(turns, [(0.0, _audio(SILENT)), (0.1, _audio(VOICED)), (0.1, _said("Hello")), (0.2, _audio(SILENT)),
                       (0.3, _audio(VOICED)), (0.3, _said(" there.")), (0.4, _audio(SILENT)), (0.9, None), (1.2, None)])  # fmt: skip
    assert [type(e) for e in out] == [ReplyStarted, AgentAudio, AgentAudio, AgentAudio, AgentAudioDone, AgentText, ReplyFinished]
    assert [e.audio for e in out if isinstance(e, AgentAudio)] == [VOICED, SILENT, VOICED]  # the pause inside is played
    assert out[-2].text == "Hello there." and out[-1].status == "completed" and out[-1].items[0].text == "Hello there."
    assert turns.deadline() is None


def test_the_replys_text_carries_where_each_stretch_is_spoken_in_its_audio() -> None:
    """The output transcript's session-timeline times, from where the reply's audio starts: the
    first audio delta's start_ms when it carries one, else the first timed transcript delta's."""
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(0.0, {**_audio(VOICED), "start_ms": 5000}), (0.0, _said(" Let me check.", 5000)),
                       (0.1, _audio(VOICED)), (0.1, _said(" Done.", 7000)), (1.0, None)])  # fmt: skip
    (text,) = [e for e in out if isinstance(e, AgentText)]
    assert text.text == "Let me check. Done."
    assert text.timing == (TextSpan(13, 0, 100), TextSpan(19, 2000, 2100))
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(0.0, _said("Hi", 800)), (0.0, _audio(VOICED)), (0.1, _said(" you.", 900)), (1.0, None)])
    (text,) = [e for e in out if isinstance(e, AgentText)]
    assert text.timing == (TextSpan(2, 0, 100), TextSpan(7, 100, 200))
    turns = lv.LiveTurns("t", 0.8, "m")  # times that are not numbers (off the SDK's types): no timing
    out = turns.event(_audio(VOICED), 0.0) + turns.event({"type": "session.output_transcript.delta",
                                                          "delta": "Untimed", "start_ms": "x"}, 0.0) + turns.tick(1.0)  # fmt: skip
    assert [(e.text, e.timing) for e in out if isinstance(e, AgentText)] == [("Untimed", ())]


def test_the_caller_turn_is_grouped_from_deltas_and_ends_on_a_pause() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(1.0, _heard("What is", 200)), (1.2, _heard(" my balance?", 400)), (1.9, None), (2.0, None)])
    assert [type(e) for e in out] == [CallerSpeechStarted, CallerSpeechStopped, CallerText]
    assert out[0].audio_start_ms == 200 and out[1].audio_end_ms == 600
    assert out[1].ago_ms == pytest.approx(800)  # latency counts from the last words
    assert out[2].text == "What is my balance?"


def test_the_agent_answering_ends_the_caller_turn_first() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(1.0, _heard("Hi", 0)), (1.3, _audio(VOICED))])
    assert [type(e) for e in out] == [CallerSpeechStarted, CallerSpeechStopped, CallerText, ReplyStarted, AgentAudio]


def test_barge_in_when_the_model_yields_to_the_caller() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(0.0, _audio(VOICED)), (0.0, _said("Welcome to")), (0.1, _audio(VOICED)),
                       (0.15, _heard("Wait", 0)), (0.2, _audio(SILENT)), (0.35, None)])  # fmt: skip
    kinds = [type(e) for e in out]
    assert kinds[-4:] == [CallerSpeechStarted, AgentAudioDone, AgentText, ReplyFinished]
    assert out[-1].status == "cancelled" and out[-1].items[0].status == "incomplete"


def test_a_backchannel_the_model_talks_through_interrupts_nothing() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    script: list[tuple[float, dict | None]] = [(0.0, _audio(VOICED)), (0.05, _heard("uh-huh", 0))]
    script += [(0.1 * n, _audio(VOICED)) for n in range(1, 15)]
    out = _run(turns, script)
    assert not any(isinstance(e, ReplyFinished | CallerSpeechStarted) for e in out)
    assert [e.text for e in out if isinstance(e, CallerText)] == ["uh-huh"]  # still a line of the caller's
    out = _run(turns, [(1.5, _audio(SILENT)), (2.4, None)])
    assert [e.status for e in out if isinstance(e, ReplyFinished)] == ["completed"]


def test_delegated_function_calls_become_tool_calls_and_a_reply_that_holds_them() -> None:
    turns = lv.LiveTurns("t", 0.8, "gpt-5.4-mini")
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup_customer",
            "arguments": '{"phone":"+1"}', "status": "completed"}  # fmt: skip
    usage = {"input_tokens": 500, "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 30}

    def wrapped(inner: dict) -> dict:
        return {"type": "response.event", "event_id": "e", "delegation_id": "dlg_1", "event": inner}

    out = _run(turns, [
        (0.0, wrapped({"type": "response.created", "response": {"id": "resp_1"}})),
        (0.1, wrapped({"type": "response.output_item.done", "output_index": 0, "item": call})),
        (0.2, wrapped({"type": "response.completed", "response": {"id": "resp_1", "model": "gpt-5.4-mini", "usage": usage}})),
    ])  # fmt: skip
    assert out[0] == ToolCallRequested("call_1", "lookup_customer", '{"phone":"+1"}', "fc_1")
    finished = out[1]
    assert isinstance(finished, ReplyFinished) and finished.status == "completed"
    assert [i.call_id for i in finished.items] == ["call_1"]
    assert finished.usage is not None and finished.usage.model == "gpt-5.4-mini"
    assert finished.usage.tokens == {"text_in": 400, "text_cached": 100, "text_out": 30}
    # A backend answer with no calls: only its usage.
    out = _run(turns, [(0.5, wrapped({"type": "response.completed", "response": {"id": "resp_2", "usage": usage}}))])
    assert [type(e) for e in out] == [UsageUpdated]


def test_usage_totals_become_increments_and_are_priced_per_second() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(1.0, {"type": "session.usage.updated", "usage": {"seconds": 1.5}}),
                       (2.0, {"type": "session.usage.updated", "usage": {"seconds": 1.5}}),
                       (3.0, {"type": "session.usage.updated", "usage": {"seconds": 4.0}})])  # fmt: skip
    assert [e.usage.seconds for e in out] == [1.5, 2.5]
    tokens, costs = pricing.split({}, DEFAULT_PRICES["gpt-live-1.1"], 60.0)
    assert tokens == {} and costs == {"session_seconds": pytest.approx(0.05)}


def test_session_closed_gives_its_last_seconds_and_a_cause() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    closed = {"type": "session.closed", "reason": "expired", "usage": {"seconds": 7.0},
              "session": {"id": "s", "expires_at": 1, "model": "gpt-live-1.1", "status": "active"}}  # fmt: skip
    out = _run(turns, [(0.0, closed)])
    assert [e.usage.seconds for e in out] == [7.0]
    assert lv.CLOSE_CAUSES[turns.closed_reason or ""] == "session_expired"


def test_a_session_closed_right_after_the_agents_last_words_keeps_them() -> None:
    """The call ends (session.close) 0.5 s after the model fell silent, before its reply's gap: the
    reply still ends, completed, with its text; one cut off mid-word ends cancelled."""
    closed = {"type": "session.closed", "reason": "close_requested", "usage": {"seconds": 3.0},
              "session": {"id": "s", "expires_at": 1, "model": "gpt-live-1.1", "status": "active"}}  # fmt: skip
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(0.0, _audio(VOICED)), (0.0, _said("Goodbye!")), (0.1, _audio(SILENT)), (0.6, closed)])
    (done,) = [e for e in out if isinstance(e, ReplyFinished)]
    assert done.status == "completed" and [e.text for e in out if isinstance(e, AgentText)] == ["Goodbye!"]
    turns = lv.LiveTurns("t", 0.8, "m")
    out = _run(turns, [(0.0, _audio(VOICED)), (0.0, _said("Good")), (0.05, closed)])
    (done,) = [e for e in out if isinstance(e, ReplyFinished)]
    assert done.status == "cancelled"


def test_a_reply_asked_for_and_never_begun_is_given_up() -> None:
    turns = lv.LiveTurns("t", 0.8, "m")
    turns.asked("dt_req_1", 0.0, instructions=True)
    assert turns.deadline() == lv.REPLY_WAIT_S
    out = _run(turns, [(lv.REPLY_WAIT_S, None)])
    assert [type(e) for e in out] == [ReplyStarted, ReplyFinished] and out[1].status == "failed"
    turns.asked("dt_req_2", 20.0, instructions=True)
    out = _run(turns, [(20.5, {"type": "error", "event_id": "e", "error": {
        "code": "invalid_value", "message": "no", "type": "invalid_request_error", "client_event_id": "dt_req_2"}})])  # fmt: skip
    assert out == [EngineError("invalid_value", "no", "dt_req_2")] and turns.pending is None


def test_silence_detection() -> None:
    assert not lv.voiced(SILENT) and not lv.voiced(b"\x7f\xfe\xfd" * 100) and lv.voiced(VOICED)


# ---- one connection against the simulator ------------------------------------------------------


async def test_a_connection_against_the_simulator() -> None:
    scenario = Scenario(turns=[Turn(caller="Look me up", agent="You are Ada.", tools=[ToolCall("lookup_customer", {"phone": "+1"})])])
    async with LiveSimulator(scenario, api_key="sk-unit", speed=4.0) as sim:
        conn = lv.LiveConnection(sim.url, "gpt-live-1.1", "sk-unit", logging.LoggerAdapter(logging.getLogger("t"), {}))
        await conn.open(SPEC)
        seen: list = []

        async def read() -> None:
            async for event in conn.events():
                seen.append(event)
                if isinstance(event, ReplyFinished) and event.items and event.items[0].kind == "function_call":
                    await conn.tool_result("call_of_another_session", {})  # dropped, not sent
                    for item in event.items:
                        await conn.tool_result(item.call_id, {"name": "Ada Lovelace"})
                    await conn.reply("dt_req_2", None)

        reader = asyncio.create_task(read())
        await conn.reply("dt_req_1", 'Greet the caller by saying exactly: "Hello there."')
        for _ in range(100):
            if any(isinstance(e, AgentText) for e in seen):
                break
            await asyncio.sleep(0.05)
        speech = synthesize("Look me up", 7) + b"\xff" * 8000
        for i in range(0, len(speech), 160):
            await conn.append_audio(speech[i : i + 160])
            await asyncio.sleep(0.005)
        for _ in range(200):
            if any(isinstance(e, AgentText) and e.text == "You are Ada." for e in seen):
                break
            await asyncio.sleep(0.05)
        await conn.close()
        await asyncio.wait_for(reader, 3)
        s = sim.sessions[0]
        assert sim.sim_errors() == []
        assert s.client_events[0]["type"] == "session.start"
        assert [o["output"] for o in s.tool_outputs] == ['{"name":"Ada Lovelace"}']
        texts = [e.text for e in seen if isinstance(e, AgentText)]
        assert texts == ["Hello there.", "You are Ada."]
        assert [e.text for e in seen if isinstance(e, CallerText)] == ["Look me up"]
        assert isinstance(seen[-1], Closed) and seen[-1].cause == "closed"
        assert sum(e.usage.seconds for e in seen if isinstance(e, UsageUpdated)) > 0  # the final one included


async def test_a_refused_start_is_engine_unavailable_and_nothing_goes_before_started() -> None:
    async with LiveSimulator(api_key="sk-unit") as sim:
        sim.refuse_starts = 1
        conn = lv.LiveConnection(sim.url, "gpt-live-1.1", "sk-unit", logging.LoggerAdapter(logging.getLogger("t"), {}))
        with pytest.raises(Exception, match="refused"):
            await conn.open(SPEC)
        sim._log.clear()  # the refusal was on purpose
        # A client that does not wait for session.started is refused (a violation).
        from websockets.asyncio.client import connect

        async with connect(sim.url, additional_headers={"Authorization": "Bearer sk-unit"}) as ws:
            await ws.send(lv.session_start(SPEC, "gpt-live-1.1"))
            await ws.send(lv.append(b"\xff" * 160))
            for _ in range(5):
                if orjson.loads(await ws.recv())["type"] == "error":
                    break
        assert any("before session.started" in v for v in sim.violations)
        sim._log.clear()
