"""The conversation's bookkeeping under the races a real call produces, against a fake session:
refused responses, queued goodbyes, cancelled tool calls, transfers without speech, idle callers."""

from __future__ import annotations

import asyncio
import base64

import pytest
from dialtone_bridge.agents import Agent, Limits
from dialtone_proto.tools import ToolAction

from .fakes import FakeSession, Tools, feed, poll, tool_response

pytestmark = pytest.mark.unit


async def test_the_answer_after_a_filler_waits_for_the_filler_to_finish() -> None:
    s = FakeSession(Agent(name="a", instructions="i", filler="One moment."), Tools(delay=0.3), filler_after_s=0.1)
    c = s.conversation
    await tool_response(c, "R1")
    await poll(lambda: len(s.creates()) == 1)  # the filler
    assert s.creates()[0]["response"]["conversation"] == "none"
    await poll(lambda: any(e["type"] == "conversation.item.create" for e in s.sent))  # the tool's result
    assert len(s.creates()) == 1  # no second response.create while the filler runs: it would be refused
    await feed(c, {"type": "response.created", "response": {"id": "F"}})
    await feed(c, {"type": "response.done", "response": {"id": "F", "status": "completed", "output": []}})
    assert len(s.creates()) == 2 and "response" not in s.creates()[1]  # now the answer


async def test_a_request_refused_in_a_race_is_asked_for_again() -> None:
    s = FakeSession(Agent(name="a", instructions="i", greeting="Hello!"))
    c = s.conversation
    await c.started()
    greeting = s.creates()[0]
    # The caller spoke at once: server VAD started a response, and our greeting raced it.
    await feed(c, {"type": "response.created", "response": {"id": "VAD"}})
    await feed(c, {"type": "error", "error": {"type": "invalid_request_error",
                                                 "code": "conversation_already_has_active_response",
                                                 "event_id": greeting["event_id"]}})
    assert len(s.creates()) == 1
    await feed(c, {"type": "response.done", "response": {"id": "VAD", "status": "completed", "output": []}})
    assert len(s.creates()) == 2
    assert s.creates()[1]["response"]["instructions"] == greeting["response"]["instructions"]


async def test_a_goodbye_queued_behind_a_reply_is_said_before_the_hang_up() -> None:
    s = FakeSession(Agent(name="a", instructions="i", goodbye="Bye now."))
    c = s.conversation
    await feed(c, {"type": "response.created", "response": {"id": "R1"}})
    await feed(c, {"type": "response.output_audio.delta", "response_id": "R1", "item_id": "i1",
                      "delta": base64.b64encode(b"\xff" * 800).decode()})
    await s.control.say_goodbye("max_duration")
    await feed(c, {"type": "response.done", "response": {"id": "R1", "status": "completed", "output": []}})
    assert not s.control.goodbye_said  # that was not the goodbye
    assert s.creates()[-1]["response"]["instructions"] == 'Say exactly: "Bye now."'
    mark = [f for f in s.frames if f[0] == "MARK"][-1][1]
    s.playout.on_mark(mark, s.clock.ms())
    await c.on_mark(mark)
    await asyncio.sleep(0.05)
    assert s.end_reason is None  # R1 played out, but the goodbye has not been said yet
    await feed(c, {"type": "response.created", "response": {"id": "G"}})
    await feed(c, {"type": "response.output_audio.delta", "response_id": "G", "item_id": "i2",
                      "delta": base64.b64encode(b"\xff" * 800).decode()})
    await feed(c, {"type": "response.done", "response": {"id": "G", "status": "completed", "output": []}})
    mark = [f for f in s.frames if f[0] == "MARK"][-1][1]
    s.playout.on_mark(mark, s.clock.ms())
    await c.on_mark(mark)
    await poll(lambda: s.end_reason is not None)
    assert s.end_reason == "max_duration" and ("HANGUP", {"reason": "max_duration"}) in s.frames


async def test_a_cancelled_response_runs_no_tool_and_idle_prompts_still_come() -> None:
    tools = Tools()
    s = FakeSession(Agent(name="a", instructions="i", limits=Limits(idle_prompt_s=0.1)), tools)
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 1})
    await feed(c, {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 900})
    await tool_response(c, "R1", status="cancelled")
    assert tools.calls == [] and not c.busy()
    await poll(lambda: any("Are you still there" in (e.get("response", {}).get("instructions") or "")
                           for e in s.creates()))


async def test_a_transfer_without_speech_is_not_delayed() -> None:
    action = ToolAction(action="transfer_call", detail="asked")
    s = FakeSession(Agent(name="a", instructions="i", transfer_number="+15551234567"), Tools(actions=[action]))
    await tool_response(s.conversation, "R1")
    async with asyncio.timeout(1.0):
        await s.ended.wait()
    assert s.end_reason == "transferred"
    assert [name for name, _ in s.events.out if name == "CallTransferred"]


async def test_no_idle_prompt_while_the_caller_is_still_talking() -> None:
    s = FakeSession(Agent(name="a", instructions="i", limits=Limits(idle_prompt_s=0.1)))
    c = s.conversation
    s.playout.on_inbound_audio(0, s.clock.ms())
    await feed(c, {"type": "response.created", "response": {"id": "R1"}})
    await feed(c, {"type": "response.output_audio.delta", "response_id": "R1", "item_id": "i1",
                      "delta": base64.b64encode(b"\xff" * 8000).decode()})
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 1})
    await feed(c, {"type": "response.done", "response": {"id": "R1", "status": "cancelled", "output": []}})
    await asyncio.sleep(0.4)  # the caller is still talking: no speech_stopped yet
    assert s.creates() == []
