"""What the model sends that is not one tidy item per response, against a fake session: several
output items in one response, barge-in across them, failed transcriptions, failed and incomplete
responses, rate limits. Every client event the conversation sends is checked by the SDK oracle."""

from __future__ import annotations

import base64

import pytest
from dialtone_bridge import metrics
from dialtone_bridge.agents import Agent
from dialtone_bridge.conversation import APOLOGY, Conversation

from .fakes import FakeSession, Tools, feed, poll

pytestmark = pytest.mark.unit

FAILED = {"type": "failed", "error": {"type": "server_error", "code": "server_error", "message": "oops"}}


def message(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "role": "assistant", "id": item_id, "status": status,
            "content": [{"type": "output_audio", "transcript": text}]}  # fmt: skip


def function_call(call_id: str, arguments: str = "{}") -> dict:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": "x",
            "arguments": arguments, "status": "completed"}  # fmt: skip


async def created(c: Conversation, rid: str) -> None:
    await feed(c, {"type": "response.created", "response": {"id": rid}})


async def done(c: Conversation, rid: str, status: str, output: list, **details: dict) -> None:
    await feed(c, {"type": "response.done", "response": {"id": rid, "status": status, "output": output,
                                                            "status_details": details.get("details")}})  # fmt: skip


async def audio(c: Conversation, rid: str, item_id: str, audio: bytes) -> None:
    await feed(c, {"type": "response.output_audio.delta", "response_id": rid, "item_id": item_id,
                      "delta": base64.b64encode(audio).decode()})  # fmt: skip


async def item(c: Conversation, rid: str, out: dict, chunks: list[bytes], transcript: str | None = None) -> None:
    """One output item: added to the conversation, its audio, its transcript, done."""
    await feed(c, {"type": "conversation.item.added", "item": {"id": out["id"]}})
    for chunk in chunks:
        await audio(c, rid, out["id"], chunk)
    if out["type"] == "message":
        await feed(c, {"type": "response.output_audio.done", "response_id": rid, "item_id": out["id"]})
        said = transcript if transcript is not None else out["content"][0]["transcript"]
        await feed(c, {"type": "response.output_audio_transcript.done", "item_id": out["id"], "transcript": said})
    await feed(c, {"type": "response.output_item.done", "item": out})


def said(s: FakeSession) -> list[tuple[str, str, bool]]:
    return [(line["role"], line["text"], line.get("interrupted", False)) for line in s.lines()]


def sent(s: FakeSession, kind: str) -> list[dict]:
    return [e for e in s.sent if e["type"] == kind]


async def test_a_preamble_and_the_answer_in_one_response_are_both_played_and_transcribed_in_order() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    preamble, answer = message("p1", "Let me see."), message("a1", "Your table is booked for two.")
    await created(c, "R1")
    await item(c, "R1", preamble, [b"\x11" * 800])
    await item(c, "R1", answer, [b"\x22" * 800, b"\x23" * 400])
    await done(c, "R1", "completed", [preamble, answer])
    assert s.heard() == [("p1", b"\x11" * 800), ("a1", b"\x22" * 800), ("a1", b"\x23" * 400)]
    assert said(s) == [("agent", "Let me see.", False), ("agent", "Your table is booked for two.", False)]
    assert [line["seq"] for line in s.lines()] == [0, 1]
    assert [line.text for line in c.lines] == ["Let me see.", "Your table is booked for two."]  # for a new socket


async def test_speech_plus_a_function_call_speaks_then_runs_the_tool_then_asks_for_the_answer() -> None:
    tools = Tools()
    s = FakeSession(Agent(name="a", instructions="i"), tools)
    c = s.conversation
    preamble, call = message("p1", "One moment, I'll check."), function_call("c1", '{"day": "monday"}')
    await created(c, "R1")
    await item(c, "R1", preamble, [b"\x11" * 800])
    await item(c, "R1", call, [])
    await done(c, "R1", "completed", [preamble, call])
    await poll(lambda: s.creates())
    assert tools.calls == ["x"] and s.heard() == [("p1", b"\x11" * 800)]
    outputs = sent(s, "conversation.item.create")
    assert [o["item"]["call_id"] for o in outputs] == ["c1"]
    assert s.sent.index(outputs[0]) < s.sent.index(s.creates()[0]) and len(s.creates()) == 1
    assert said(s) == [("agent", "One moment, I'll check.", False)]
    tool = next(fields for name, fields in s.events.out if name == "ToolCalled")
    assert tool["arguments"] == {"day": "monday"} and tool["seq"] > s.lines()[0]["seq"]


async def test_parallel_function_calls_all_run_and_all_results_go_back_before_one_response() -> None:
    tools = Tools(delay=0.05)
    s = FakeSession(Agent(name="a", instructions="i"), tools)
    c = s.conversation
    calls = [function_call("c1", '{"n": 1}'), function_call("c2", '{"n": 2}'), function_call("c3", '{"n": 3}')]
    await created(c, "R1")
    for call in calls:
        await item(c, "R1", call, [])
    await done(c, "R1", "completed", calls)
    await poll(lambda: s.creates())
    assert tools.calls == ["x", "x", "x"]
    results = [e["item"]["call_id"] for e in sent(s, "conversation.item.create")]
    assert results == ["c1", "c2", "c3"]
    assert s.sent[-1] == s.creates()[0] and len(s.creates()) == 1  # one response, after every result
    ran = [fields["tool_call_id"] for name, fields in s.events.out if name == "ToolCalled"]
    assert sorted(ran) == ["c1", "c2", "c3"]


async def test_a_caller_line_without_text_is_recorded_untranscribed_never_dropped() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    await feed(c, {"type": "input_audio_buffer.committed", "item_id": "u2"})
    await feed(c, {"type": "input_audio_buffer.committed", "item_id": "u3"})
    await feed(c, {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u3",
                      "content_index": 0, "transcript": "Thanks."})  # fmt: skip
    await feed(c, {"type": "conversation.item.input_audio_transcription.failed", "item_id": "u1",
                      "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible",
                                                    "message": "The audio could not be transcribed."}})  # fmt: skip
    await feed(c, {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u2",
                      "content_index": 0, "transcript": "  "})  # fmt: skip
    lines = sorted(s.lines(), key=lambda line: line["seq"])
    assert [(line["seq"], line["role"], line["text"], line.get("untranscribed", False)) for line in lines] == [
        (0, "caller", "", True), (1, "caller", "", True), (2, "caller", "Thanks.", False)]  # fmt: skip
    assert [line.text for line in c.lines] == ["Thanks."]  # nothing to tell a new socket of the others


async def test_a_failed_response_is_asked_for_again_once_then_the_agent_apologises() -> None:
    s = FakeSession(Agent(name="a", instructions="i", greeting="Hello!"))
    c = s.conversation
    await c.started()
    greeting = s.creates()[0]["response"]["instructions"]
    await created(c, "G1")
    await done(c, "G1", "failed", [], details=FAILED)
    assert [e["response"]["instructions"] for e in s.creates()] == [greeting, greeting]
    await created(c, "G2")
    await done(c, "G2", "failed", [], details=FAILED)
    assert s.creates()[-1]["response"]["instructions"] == f'Say exactly: "{APOLOGY}"'
    await created(c, "A1")
    await done(c, "A1", "failed", [], details=FAILED)
    assert len(s.creates()) == 3  # the apology is the last resort: no loop


async def test_a_failed_answer_the_server_started_itself_is_asked_for_again() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    await created(c, "V1")  # server VAD answering the caller
    await done(c, "V1", "failed", [], details=FAILED)
    assert len(s.creates()) == 1 and "response" not in s.creates()[0]  # a plain retry of the answer
    answer = message("a1", "Here you are.")
    await created(c, "V2")
    await item(c, "V2", answer, [b"\x11" * 800])
    await done(c, "V2", "completed", [answer])
    assert said(s) == [("agent", "Here you are.", False)] and len(s.creates()) == 1


async def test_a_goodbye_that_fails_twice_is_given_up_and_the_call_still_hangs_up() -> None:
    s = FakeSession(Agent(name="a", instructions="i", goodbye="Bye now."))
    c = s.conversation
    await s.control.say_goodbye("max_duration")
    for rid in ("B1", "B2"):
        await created(c, rid)
        await done(c, rid, "failed", [], details=FAILED)
    assert [e["response"]["instructions"] for e in s.creates()] == ['Say exactly: "Bye now."'] * 2
    await poll(lambda: s.end_reason is not None)
    assert s.end_reason == "max_duration"


async def test_an_incomplete_response_is_recorded_interrupted_and_a_silent_one_is_retried() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    cut = message("a1", "Our opening hours are", status="incomplete")
    await created(c, "R1")
    await item(c, "R1", cut, [b"\x11" * 800])
    await done(c, "R1", "incomplete", [cut], details={"type": "incomplete", "reason": "max_output_tokens"})
    assert said(s) == [("agent", "Our opening hours are", True)]
    assert s.creates() == []  # the caller heard a (partial) answer and may go on
    await created(c, "R2")
    await done(c, "R2", "incomplete", [], details={"type": "incomplete", "reason": "content_filter"})
    assert len(s.creates()) == 1  # nothing was heard: as good as failed


async def test_rate_limits_are_accepted_as_a_gauge() -> None:
    c = FakeSession(Agent(name="a", instructions="i")).conversation
    await feed(c, {"type": "rate_limits.updated", "rate_limits": [
        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
        {"name": "tokens", "limit": 400000, "remaining": 395904, "reset_seconds": 0.6}]})  # fmt: skip
    gauge = "dialtone_bridge_realtime_rate_limit_remaining"
    assert metrics.REGISTRY.get_sample_value(gauge, {"name": "requests"}) == 4999
    assert metrics.REGISTRY.get_sample_value(gauge, {"name": "tokens"}) == 395904


async def test_barge_in_during_the_preamble_truncates_it_and_deletes_the_unheard_answer() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    preamble = message("p1", "Let me see.")
    await created(c, "R1")
    await item(c, "R1", preamble, [b"\x11" * 800, b"\x12" * 800])
    await feed(c, {"type": "conversation.item.added", "item": {"id": "a1"}})
    await audio(c, "R1", "a1", b"\x22" * 800)  # queued at Twilio behind the preamble
    first_mark = [body for kind, body in s.frames if kind == "MARK"][0]
    s.playout.on_mark(first_mark, s.clock.ms())  # the caller heard the first 100 ms
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 900})
    assert ("CLEAR", None) in s.frames
    assert [(e["item_id"], e["audio_end_ms"]) for e in sent(s, "conversation.item.truncate")] == [("p1", 100)]
    await audio(c, "R1", "a1", b"\x23" * 800)  # still in flight: not played
    await done(c, "R1", "cancelled", [preamble, message("a1", "It is", status="incomplete")])
    assert [e["item_id"] for e in sent(s, "conversation.item.delete")] == ["a1"]
    assert b"\x23" * 800 not in [a for _, a in s.heard()]
    # The preamble, heard 100 of its 200 ms, is cut to about its first half; the answer, heard not
    # at all, to nothing. Both keep what the model generated.
    assert said(s) == [("agent", "Let me", True), ("agent", "", True)]
    assert [(line["heard_ms"], line["audio_ms"], line["full_text"]) for line in s.lines()] == [
        (100.0, 200.0, "Let me see."), (0.0, 200.0, "It is")]  # fmt: skip
    assert [line.text for line in c.lines] == ["Let me"]  # the model no longer has the answer


async def test_barge_in_before_anything_was_heard_deletes_instead_of_truncating_to_zero() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    reply = message("r1", "Hello there, how can I help?", status="incomplete")
    await created(c, "R1")
    await feed(c, {"type": "conversation.item.added", "item": {"id": "r1"}})
    await audio(c, "R1", "r1", b"\x11" * 800)
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 20})
    assert sent(s, "conversation.item.truncate") == []  # a truncate to 0 ms is refused (trap 8)
    await done(c, "R1", "cancelled", [reply])
    assert [e["item_id"] for e in sent(s, "conversation.item.delete")] == ["r1"]
    assert said(s) == [("agent", "", True)] and c.lines == []
    assert s.lines()[0]["full_text"] == "Hello there, how can I help?" and s.lines()[0]["heard_ms"] == 0


async def test_barge_in_after_a_fully_heard_preamble_keeps_it_whole_and_deletes_the_answer() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    preamble, answer = message("p1", "Let me see."), message("a1", "It is booked.")
    await created(c, "R1")
    await item(c, "R1", preamble, [b"\x11" * 800])
    await item(c, "R1", answer, [b"\x22" * 800])
    await done(c, "R1", "completed", [preamble, answer])  # lines recorded as the response ends
    first_mark = [body for kind, body in s.frames if kind == "MARK"][0]
    s.playout.on_mark(first_mark, s.clock.ms())  # the preamble played out; the answer not yet
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 900})
    assert sent(s, "conversation.item.truncate") == []
    assert [e["item_id"] for e in sent(s, "conversation.item.delete")] == ["a1"]  # no response running: now
    # The answer's line, written when the response ended, is written again as interrupted and heard
    # not at all, under a higher revision.
    assert said(s) == [("agent", "Let me see.", False), ("agent", "It is booked.", False),
                       ("agent", "", True)]  # fmt: skip
    assert [(line["item_id"], line["rev"]) for line in s.lines()] == [("p1", 0), ("a1", 0), ("a1", 1)]
    assert s.lines()[0]["heard_ms"] == s.lines()[0]["audio_ms"] == 100 and s.lines()[0]["full_text"] is None
    assert s.lines()[2]["full_text"] == "It is booked."
    assert [line.text for line in c.lines] == ["Let me see."]


async def test_barge_in_after_the_response_ended_rewrites_the_cut_line_as_interrupted() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    reply = message("r1", "We are open from nine to five.")
    await created(c, "R1")
    await item(c, "R1", reply, [b"\x11" * 800, b"\x12" * 800])
    await done(c, "R1", "completed", [reply])
    first_mark = [body for kind, body in s.frames if kind == "MARK"][0]
    s.playout.on_mark(first_mark, s.clock.ms())  # half of it heard, the rest still queued
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 900})
    assert [(e["item_id"], e["audio_end_ms"]) for e in sent(s, "conversation.item.truncate")] == [("r1", 100)]
    assert said(s) == [("agent", "We are open from nine to five.", False),
                       ("agent", "We are open from", True)]  # fmt: skip
    assert sent(s, "conversation.item.delete") == []
    assert [line.text for line in c.lines] == ["We are open from"]
