"""What the transcript says the caller heard: a line the caller cut off is marked interrupted,
with ``heard_ms`` of ``audio_ms`` and its text cut to the heard part, whether the reply was still
being generated or had been generated in full before the caller spoke; every line has its offset
from the stream's start; every answered turn is a ``turn.measured`` record."""

from __future__ import annotations

import types

import pytest
from dialtone_bridge.agents import Agent
from dialtone_bridge.engine import TextSpan
from dialtone_bridge.heard import cut_text
from dialtone_bridge.turns import TurnLatency

from .fakes import FakeSession, Tools, feed, poll
from .test_conversation_outputs import audio, created, done, function_call, item, message, sent

pytestmark = pytest.mark.unit

ANSWER = "We are open from nine to five on weekdays and ten to two on Saturdays."


def marks(s: FakeSession) -> list[str]:
    return [body for kind, body in s.frames if kind == "MARK"]


def agent_lines(s: FakeSession) -> list[dict]:
    return [line for line in s.lines() if line["role"] == "agent"]


def clocked(now: list[float]) -> FakeSession:
    """A fake session whose call clock reads ``now[0]`` ms and whose caller clock (Twilio's media
    timestamps) is known: the caller's frame stamped 2000 ms arrived at call time 1000 ms."""
    s = FakeSession(Agent(name="a", instructions="i"), Tools())
    s.clock = types.SimpleNamespace(ms=lambda: now[0])
    s.playout.on_inbound_audio(2000.0, 1000.0)
    return s


# ---- the text of what was heard -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("heard", "audio_ms", "expected"),
    [
        (0, 1000, ""),
        (1000, 1000, ANSWER),
        (1500, 1000, ANSWER),  # a truncate point past the end is the whole line
        (500, 1000, "We are open from nine to five on"),  # half of the characters, on a word boundary
        (100, 1000, "We are"),  # "open" is less than half heard: left out
        (1, 1000, ""),
    ],
)
def test_the_text_is_cut_in_proportion_to_the_audio_heard_at_a_word_boundary(heard, audio_ms, expected) -> None:
    assert cut_text(ANSWER, heard, audio_ms) == expected
    assert ANSWER.startswith(expected)


def test_a_timed_transcript_cuts_where_the_words_were_spoken_not_in_proportion() -> None:
    """GPT-Live's transcript says when each stretch is spoken: after a long pause the words that
    follow it were not heard, though a proportional cut would count them."""
    text = "Let me check. Your order has shipped."
    timing = (TextSpan(13, 0, 600), TextSpan(37, 2600, 4000))  # a 2 s pause while the tool ran
    assert cut_text(text, 2000, 4000) == "Let me check. Your"  # half the audio, half the characters
    assert cut_text(text, 2000, 4000, timing) == "Let me check."
    assert cut_text(text, 3300, 4000, timing) == "Let me check. Your order"  # half-way through the stretch
    assert cut_text(text, 300, 4000, timing) == "Let me"
    assert cut_text(text, 4000, 4000, timing) == text


def test_no_audio_keeps_the_text_whole() -> None:
    assert cut_text(" Hello. ", 0, 0) == "Hello."


# ---- barge-in: the reply still being generated ------------------------------------------------------
async def test_a_reply_cut_while_still_being_generated_is_stored_interrupted_and_cut_once() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    await created(c, "R1")
    await feed(c, {"type": "conversation.item.added", "item": {"id": "r1"}})
    for chunk in (b"\x11" * 800, b"\x12" * 800, b"\x13" * 800):
        await audio(c, "R1", "r1", chunk)
    s.playout.on_mark(marks(s)[0], s.clock.ms())  # the caller heard the first 100 ms
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 900})
    assert [(e["item_id"], e["audio_end_ms"]) for e in sent(s, "conversation.item.truncate")] == [("r1", 100)]
    assert agent_lines(s) == []  # nothing is published before the response is done
    await audio(c, "R1", "r1", b"\x14" * 800)  # generated before the server stopped: never played
    await audio(c, "R1", "r1", b"\x15" * 800)
    cut = message("r1", ANSWER, status="incomplete")
    await feed(c, {"type": "response.output_audio_transcript.done", "item_id": "r1", "transcript": ANSWER})
    await done(c, "R1", "cancelled", [cut])

    [line] = agent_lines(s)
    assert line["interrupted"] and line["rev"] == 0
    assert (line["heard_ms"], line["audio_ms"]) == (100.0, 500.0)  # 100 ms heard of 500 ms generated
    assert line["text"] == cut_text(ANSWER, 100, 500) == "We are open from"
    assert line["full_text"] == ANSWER
    assert [x.text for x in c.lines] == ["We are open from"]  # what a new socket is told was said


# ---- barge-in: the reply generated in full before the caller spoke --------------------------------
async def test_a_reply_generated_in_full_then_cut_is_published_again_interrupted_and_cut() -> None:
    now = [1000.0]
    s = clocked(now)
    c = s.conversation
    reply = message("r1", ANSWER)
    await created(c, "R1")
    await item(c, "R1", reply, [b"\x11" * 800] * 6)  # 600 ms of audio, all of it sent at once
    await done(c, "R1", "completed", [reply])
    [first] = agent_lines(s)
    assert not first["interrupted"] and first["text"] == ANSWER and first["full_text"] is None
    assert first["heard_ms"] == first["audio_ms"] == 600.0
    # Nothing was buffered: the reply plays from when it lands, one trip (0 ms here) from now,
    # on the caller's clock: 2000 ms into the stream.
    assert first["offset_ms"] == 2000.0

    s.playout.on_mark(marks(s)[1], now[0])  # the caller heard 200 ms of it
    now[0] = 1210.0
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 2300})
    [truncate] = sent(s, "conversation.item.truncate")
    assert truncate["item_id"] == "r1" and 200 <= truncate["audio_end_ms"] < 600

    [_, again] = agent_lines(s)
    assert again["item_id"] == "r1" and again["seq"] == first["seq"] and again["rev"] == 1
    assert again["interrupted"] and again["heard_ms"] == truncate["audio_end_ms"] and again["audio_ms"] == 600.0
    assert again["text"] == cut_text(ANSWER, again["heard_ms"], 600) and len(again["text"]) < len(ANSWER)
    assert ANSWER.startswith(again["text"]) and again["full_text"] == ANSWER
    assert again["offset_ms"] == first["offset_ms"]
    assert [x.text for x in c.lines] == [again["text"]]


# ---- the caller hangs up over a line -------------------------------------------------------------------
async def test_a_line_playing_when_the_caller_hangs_up_says_what_they_heard() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    reply = message("r1", ANSWER)
    await created(c, "R1")
    await item(c, "R1", reply, [b"\x11" * 800] * 4)
    await done(c, "R1", "completed", [reply])
    s.playout.on_mark(marks(s)[0], s.clock.ms())  # 100 of its 400 ms played, then the caller left
    c.hung_up()
    [_, again] = agent_lines(s)
    assert again["rev"] == 1 and again["interrupted"] and (again["heard_ms"], again["audio_ms"]) == (100.0, 400.0)
    assert again["text"] == cut_text(ANSWER, 100, 400) and again["full_text"] == ANSWER
    assert sent(s, "conversation.item.truncate") == []  # the call is over: nothing to tell the model
    c.hung_up()  # nothing queued any more
    assert len(agent_lines(s)) == 2


async def test_a_call_that_ends_with_nothing_playing_changes_no_line() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    s.conversation.hung_up()
    assert s.lines() == []


# ---- offsets ------------------------------------------------------------------------------------
async def test_a_callers_line_starts_where_the_model_heard_speech_start_on_the_stream_clock() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 1234})
    await feed(c, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    await feed(c, {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
                      "content_index": 0, "transcript": "Hello?"})  # fmt: skip
    [line] = s.lines()
    assert line["offset_ms"] == 1234.0  # the fake's input buffer is the stream, from its start


async def test_a_keypress_is_placed_on_the_callers_clock() -> None:
    now = [1500.0]
    s = clocked(now)
    await s.conversation.on_dtmf("5")
    [line] = s.lines()
    assert line["source"] == "dtmf" and line["offset_ms"] == 2500.0  # frame at 2000 ms, 500 ms ago


# ---- turns ----------------------------------------------------------------------------------------
def test_a_turn_record_has_its_latencies_and_the_tool_time_within_it() -> None:
    measured = []
    turns = TurnLatency(on_measured=measured.append)
    turns.speech_stopped(1000, offset_ms=4000)
    turns.tool_started(1100)
    turns.tool_started(1200)  # two tools at once: their overlap counts once
    turns.tool_finished(1300)
    turns.tool_finished(1500)
    turns.reply_audio("a1", reply=True)
    turns.audio_sent("a1", "m1", 1900)
    assert measured == []  # not heard yet
    turns.mark_echoed("m1", 2100)
    [turn] = measured
    assert (turn.n, turn.item_id, turn.offset_ms) == (0, "a1", 4000)
    assert (turn.sent_ms, turn.heard_ms, turn.tool_ms, turn.tools) == (900, 1100, 400, 2)


def test_a_turn_talked_over_before_it_was_heard_or_left_at_the_end_is_recorded_unheard() -> None:
    measured = []
    turns = TurnLatency(on_measured=measured.append)
    turns.speech_stopped(1000)
    turns.reply_audio("a1", reply=True)
    turns.audio_sent("a1", "m1", 1300)
    turns.speech_started()
    turns.speech_stopped(2000)
    turns.reply_audio("a2", reply=True)
    turns.audio_sent("a2", "m2", 2250)
    turns.close()  # the call ended before the mark came back
    assert [(t.n, t.sent_ms, t.heard_ms) for t in measured] == [(0, 300, None), (1, 250, None)]


def test_a_tool_still_running_when_the_reply_starts_counts_up_to_the_reply() -> None:
    measured = []
    turns = TurnLatency(on_measured=measured.append)
    turns.speech_stopped(1000)
    turns.tool_started(1200)
    turns.reply_audio("filler", reply=True)
    turns.audio_sent("filler", "m1", 2700)  # a filler while the tool runs
    turns.tool_finished(4000)
    turns.mark_echoed("m1", 2800)
    assert [(t.sent_ms, t.heard_ms, t.tool_ms, t.tools) for t in measured] == [(1700, 1800, 1500, 1)]


async def test_the_conversation_publishes_a_turn_with_the_tool_time_in_it() -> None:
    now = [5000.0]
    s = clocked(now)
    s.ctx.tools = Tools(delay=0.05)
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 100})
    await feed(c, {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 1100})
    await created(c, "R1")
    await item(c, "R1", function_call("c1"), [])
    now[0] = 5100.0  # the tool starts
    await done(c, "R1", "completed", [function_call("c1")])
    await poll(lambda: s.creates())
    now[0] = 5600.0
    await created(c, "R2")
    await item(c, "R2", message("a1", "Done."), [b"\x11" * 800])
    s.turns.mark_echoed(marks(s)[0], 5700.0)
    [turn] = [fields for name, fields in s.events.out if name == "TurnMeasured"]
    assert turn["item_id"] == "a1" and turn["offset_ms"] == 1100.0
    assert (turn["sent_ms"], turn["heard_ms"], turn["tools"]) == (600.0, 700.0, 1)
    assert turn["tool_ms"] == 0.0  # the fake clock stood still while the tool ran
