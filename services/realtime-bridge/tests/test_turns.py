"""Turn latency and the other per-call measurements the bridge exports: what the numbers are for
a given sequence of model events, on a clock the test controls."""

from __future__ import annotations

import types

import pytest
from dialtone_bridge import metrics
from dialtone_bridge.agents import Agent
from dialtone_bridge.service import Bridge
from dialtone_bridge.settings import DEFAULT_PRICES
from dialtone_bridge.turns import TurnLatency

from .fakes import FakeSession, feed
from .test_conversation_outputs import created, done, item, message, sent
from .test_pricing import RESPONSE_USAGE

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def session_at(now: list[float]) -> FakeSession:
    """A fake session whose call clock reads ``now[0]`` milliseconds."""
    s = FakeSession(Agent(name="a", instructions="i"))
    s.clock = types.SimpleNamespace(ms=lambda: now[0])
    return s


# ---- TurnLatency on its own --------------------------------------------------------------------
def test_a_turn_runs_from_speech_stopped_to_the_replys_first_audio_sent_and_then_heard() -> None:
    turns = TurnLatency()
    turns.speech_stopped(1000)
    turns.reply_audio("a1", reply=True)
    assert turns.audio_sent("a1", "m1", 1650) == pytest.approx(0.65)
    assert turns.audio_sent("a1", "m2", 1700) is None  # later chunks of the same reply: same turn
    assert turns.mark_echoed("m2", 1950) is None  # not the mark behind the first audio
    assert turns.mark_echoed("m1", 1900) == pytest.approx(0.9)
    assert turns.mark_echoed("m1", 2000) is None  # counted once


def test_a_turn_is_measured_by_stage_model_then_platform_then_playout() -> None:
    measured = []
    turns = TurnLatency(measured.append)
    turns.speech_stopped(1000, offset_ms=5000)
    turns.reply_audio("a1", reply=True, now_ms=1420)  # the model's first audio of the answer
    turns.reply_audio("a1", reply=True, now_ms=1500)  # more of it: the first counts
    turns.audio_sent("a1", "m1", 1426)
    turns.mark_echoed("m1", 1690)
    (turn,) = measured
    assert (turn.received_ms, turn.sent_ms, turn.heard_ms) == (420.0, 426.0, 690.0)
    assert turn.sent_ms - turn.received_ms == 6.0  # the platform's own share
    # A reply whose arrival was not timed (an older caller of reply_audio) has no model stage.
    turns.speech_stopped(3000)
    turns.reply_audio("a2", reply=True)
    turns.audio_sent("a2", "m2", 3300)
    turns.close()
    assert measured[1].received_ms is None and measured[1].sent_ms == 300.0


def test_a_reply_sent_again_after_a_move_is_heard_behind_its_new_mark() -> None:
    turns = TurnLatency()
    turns.speech_stopped(1000)
    turns.reply_audio("a1", reply=True)
    turns.audio_sent("a1", "m1", 1650)
    turns.resent("a2", "m9")  # another item's audio: not this turn's
    turns.resent("a1", "m5")  # the stream moved before m1 came back: the audio follows m5 now
    assert turns.mark_echoed("m1", 1900) is None
    assert turns.mark_echoed("m5", 2600) == pytest.approx(1.6)  # the gap is in what the caller waited


def test_a_caller_who_speaks_again_before_the_reply_starts_a_new_turn() -> None:
    turns = TurnLatency()
    turns.speech_stopped(1000)
    turns.speech_started()
    turns.reply_audio("a1", reply=True)
    assert turns.audio_sent("a1", "m1", 1500) is None
    turns.speech_stopped(3000)
    turns.reply_audio("a2", reply=True)
    assert turns.audio_sent("a2", "m2", 3400) == pytest.approx(0.4)


def test_a_reply_talked_over_before_it_was_heard_has_no_heard_latency() -> None:
    turns = TurnLatency()
    turns.speech_stopped(1000)
    turns.reply_audio("a1", reply=True)
    assert turns.audio_sent("a1", "m1", 1300) == pytest.approx(0.3)
    turns.speech_started()  # barge-in: the clear makes Twilio echo every pending mark at once
    assert turns.mark_echoed("m1", 1400) is None


def test_no_turn_for_the_greeting_nor_for_an_idle_prompt() -> None:
    turns = TurnLatency()
    turns.reply_audio("greeting", reply=True)  # nobody spoke before it
    assert turns.audio_sent("greeting", "m0", 800) is None
    turns.speech_stopped(1000)
    turns.reply_audio("prompt", reply=False)  # no answer came; the agent asks if anyone is there
    assert turns.audio_sent("prompt", "m1", 9000) is None
    turns.reply_audio("late", reply=True)
    assert turns.audio_sent("late", "m2", 9500) is None


def test_audio_of_another_item_before_the_reply_does_not_end_the_turn() -> None:
    turns = TurnLatency()
    turns.reply_audio("old", reply=True)
    turns.speech_stopped(1000)
    assert turns.audio_sent("old", "m0", 1010) is None  # the tail of what was being said
    turns.reply_audio("a1", reply=True)
    assert turns.audio_sent("a1", "m1", 1250) == pytest.approx(0.25)


# ---- through the conversation -------------------------------------------------------------------
async def test_the_conversation_times_the_turn_from_the_models_speech_stopped_to_the_reply() -> None:
    now = [5000.0]
    s = session_at(now)
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 100})
    now[0] = 6000.0
    await feed(c, {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 1100})
    now[0] = 6200.0
    await created(c, "R1")
    now[0] = 6720.0
    await item(c, "R1", message("a1", "Sure."), [b"\x11" * 800, b"\x12" * 800])
    assert s.turn_seconds == [pytest.approx(0.72)]


async def test_an_idle_prompt_is_not_a_turn() -> None:
    now = [1000.0]
    s = session_at(now)
    c = s.conversation
    await feed(c, {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 900})
    await c.request_response('Say exactly: "Are you still there?"', purpose="prompt")
    await created(c, "R1")
    now[0] = 9000.0
    await item(c, "R1", message("p1", "Are you still there?"), [b"\x11" * 800])
    assert s.turn_seconds == []


async def test_a_truncate_the_model_refuses_is_counted_and_other_errors_are_not() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    c = s.conversation
    await created(c, "R1")
    await item(c, "R1", message("p1", "Let me see."), [b"\x11" * 800, b"\x12" * 800])
    first_mark = [body for kind, body in s.frames if kind == "MARK"][0]
    s.playout.on_mark(first_mark, s.clock.ms())
    await feed(c, {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 900})
    [truncate] = sent(s, "conversation.item.truncate")
    before = sample("dialtone_bridge_truncates_refused_total")
    await feed(c, {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                                 "message": "audio_end_ms too large", "event_id": "evt_other"}})
    assert sample("dialtone_bridge_truncates_refused_total") == before
    await feed(c, {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                                 "message": "audio_end_ms too large",
                                                 "event_id": truncate["event_id"]}})
    assert sample("dialtone_bridge_truncates_refused_total") == before + 1
    await done(c, "R1", "cancelled", [message("p1", "Let me see.")])


async def test_tokens_and_dollars_are_counted_by_kind() -> None:
    s = FakeSession(Agent(name="a", instructions="i"))
    s.ctx.settings.prices = DEFAULT_PRICES
    c = s.conversation
    kinds = ("text_in", "text_cached", "audio_in", "audio_cached", "text_out", "audio_out")
    tokens = {k: sample("dialtone_bridge_realtime_tokens_total", kind=k) for k in kinds}
    dollars = {k: sample("dialtone_bridge_realtime_cost_dollars_total", kind=k) for k in kinds}
    await created(c, "R1")
    await feed(c, {"type": "response.done", "response": {"id": "R1", "status": "completed", "output": [],
                                                             "usage": RESPONSE_USAGE}})
    got = {k: sample("dialtone_bridge_realtime_tokens_total", kind=k) - tokens[k] for k in kinds}
    assert got == {"text_in": 100, "text_cached": 200, "audio_in": 700, "audio_cached": 300,
                   "text_out": 100, "audio_out": 500}
    cost = {k: sample("dialtone_bridge_realtime_cost_dollars_total", kind=k) - dollars[k] for k in kinds}
    # gpt-realtime-2.1 (the default) per 1M tokens: text 4 / 0.40 cached / 24 out, audio 32 / 0.40 cached / 64 out.
    assert cost["audio_out"] == pytest.approx(500 * 64 / 1e6)
    assert cost["audio_in"] == pytest.approx(700 * 32 / 1e6)
    assert sum(cost.values()) == pytest.approx(0.0574)
    [usage] = [f for name, f in s.events.out if name == "UsageReported"]
    assert usage["cost_usd"] == pytest.approx(0.0574)  # the session's cost agrees with the counters
    assert usage["tokens"] == got  # and the event splits it by kind, as the counters do
    assert usage["costs"] == pytest.approx(cost)


# ---- readiness ---------------------------------------------------------------------------------
def test_a_bridge_is_ready_only_connected_not_draining_and_not_full() -> None:
    nc = types.SimpleNamespace(is_connected=True)
    ctx = types.SimpleNamespace(nc=nc, settings=types.SimpleNamespace(max_calls=1), bridge_id="b1")
    bridge = Bridge(ctx, calls=None)  # type: ignore[arg-type]
    metrics.READY.set_function(bridge._ready)  # what Bridge.start does  # noqa: SLF001
    assert sample("dialtone_bridge_ready") == 1
    bridge.sessions["CA1"] = None  # type: ignore[assignment]
    assert sample("dialtone_bridge_ready") == 0  # full
    bridge.sessions.clear()
    nc.is_connected = False
    assert sample("dialtone_bridge_ready") == 0  # cut off from NATS
    nc.is_connected = True
    bridge.draining = True
    assert sample("dialtone_bridge_ready") == 0
