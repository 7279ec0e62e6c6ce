"""The data behind the dashboard, end to end: the transcript says what the caller heard (a line
the caller cut off is marked and cut, also when the model had generated all of it before they
spoke), every turn is timed, and the cost shown is the hand sum of the call's usage events at the
configured prices."""

from __future__ import annotations

import json

import asyncpg
import pytest
from dialtone_bridge.settings import DEFAULT_MODEL, DEFAULT_PRICES
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, LAB, TEST_AGENTS, Admin, poll

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

GREETING = TEST_AGENTS["lab"].split('greeting = "', 1)[1].split('"', 1)[0]


async def call_lab(platform: Platform, **kwargs) -> SimCall:
    return await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_="+15005550001", to=LAB, **kwargs)


async def test_a_greeting_generated_in_full_then_talked_over_is_stored_interrupted_and_cut(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = Scenario(turns=[Turn(caller="Sorry, one question.", agent="Of course, go ahead.")])
    before = len(realtime.sessions)
    call = await call_lab(platform, one_way_delay_ms=40)
    await poll(lambda: len(realtime.sessions) > before, 20, what="the Realtime session")
    sim = realtime.sessions[before]

    def greeting_done() -> bool:
        return any(e["type"] == "response.done" for e in sim.server_events)

    # The model generates faster than the line plays: the greeting is complete, and its line
    # published whole, long before the caller has heard it.
    await poll(greeting_done, 20, what="the greeting to be generated in full")
    await call.wait_heard(1500, timeout=20)
    assert len(call.heard) < len(sim.output_audio[sim.output_order[0]])  # still playing
    await call.say("Sorry, one question.")
    await call.wait_quiet(timeout=20)
    await call.hangup()

    [(item_id, audio_end_ms, _)] = sim.truncations
    assert item_id == sim.output_order[0]
    generated_ms = len(sim.output_audio[item_id]) / 8
    session = await admin.session(call.call_sid)
    greeting, *rest = session["transcript"]
    print(f"greeting cut: heard {greeting['heard_ms']} of {greeting['audio_ms']} ms: {greeting['text']!r}")
    assert greeting["role"] == "agent" and greeting["interrupted"]
    assert greeting["heard_ms"] == audio_end_ms < greeting["audio_ms"] == pytest.approx(generated_ms, abs=1)
    assert greeting["full_text"] == GREETING
    assert GREETING.startswith(greeting["text"]) and 0 < len(greeting["text"]) < len(GREETING)
    # About the heard share of the words: within a few words of proportional.
    share = len(greeting["text"]) / len(GREETING)
    assert abs(share - audio_end_ms / generated_ms) < 0.15, share
    # Each line is placed on the stream's clock: the greeting first, the caller talking over it
    # before it would have ended, the answer after the caller.
    caller = next(line for line in rest if line["role"] == "caller")
    answer = next(line for line in rest if line["role"] == "agent")
    assert caller["text"] == "Sorry, one question." and not answer["interrupted"]
    assert answer["heard_ms"] == answer["audio_ms"] > 0 and answer["full_text"] is None
    assert 0 <= greeting["offset_ms"] < caller["offset_ms"] < greeting["offset_ms"] + greeting["audio_ms"]
    assert answer["offset_ms"] > caller["offset_ms"]

    # The caller's turn, timed: stopped speaking -> the answer's first audio sent, then heard.
    [turn] = session["turns"]
    assert turn["item_id"] == sim.output_order[-1] and turn["tools"] == 0
    assert 0 < turn["received_ms"] <= turn["sent_ms"] < turn["heard_ms"] < 5000
    assert caller["offset_ms"] < turn["offset_ms"] < answer["offset_ms"]  # the caller stopped, then the answer
    assert session["latency"] == {"turns": 1, "received_p50": turn["received_ms"], "received_p95": turn["received_ms"],
                                  "sent_p50": turn["sent_ms"], "sent_p95": turn["sent_ms"],
                                  "heard_p50": turn["heard_ms"], "heard_p95": turn["heard_ms"]}


def raw_usage(sim_sessions: list) -> dict[str, dict]:
    """The provider's usage blocks the Realtime simulator sent, by what they are about (a response's
    id, a transcribed item's id): the bus carries only the bridge's engine-neutral counts."""
    found: dict[str, dict] = {}
    for sim in sim_sessions:
        for e in sim.server_events:
            if e["type"] == "response.done" and e["response"].get("usage"):
                found[e["response"]["id"]] = e["response"]["usage"]
            elif e["type"] == "conversation.item.input_audio_transcription.completed" and e.get("usage"):
                found[e["item_id"]] = e["usage"]
    return found


def hand_cost(event: dict, usage: dict) -> dict[str, float]:
    """One usage event's dollars by kind, worked out from the provider's raw usage block and the
    prices, without the bridge's code: USD per 1M tokens; cached input at the cached rate."""
    prices = DEFAULT_PRICES[event["model"]]
    inp, out = usage.get("input_token_details") or {}, usage.get("output_token_details") or {}
    cached = inp.get("cached_tokens_details") or {}
    text_in = (inp.get("text_tokens") or 0) - (cached.get("text_tokens") or 0)
    audio_in = (inp.get("audio_tokens") or 0) - (cached.get("audio_tokens") or 0)
    text_out = out.get("text_tokens", 0) if out else usage.get("output_tokens", 0)
    audio_out = out.get("audio_tokens", 0)
    usd = {
        "text_in": text_in * prices["text_in"] / 1e6,
        "audio_in": audio_in * prices["audio_in"] / 1e6,
        "cached": ((cached.get("text_tokens") or 0) * prices["text_cached"]
                   + (cached.get("audio_tokens") or 0) * prices["audio_cached"]) / 1e6,
        "text_out": text_out * prices["text_out"] / 1e6,
        "audio_out": audio_out * prices["audio_out"] / 1e6,
    }
    if event["source"] == "transcription":
        return {"transcription": sum(usd.values())}
    return usd


async def test_the_cost_shown_is_the_hand_sum_of_the_calls_usage_events(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = Scenario(turns=[
        Turn(caller="How is my report coming along?", agent="Your report is ready.",
             tools=[ToolCall("slow_report", {"seconds": 0.4})]),
    ])  # fmt: skip
    before = len(realtime.sessions)
    call = await call_lab(platform)
    await call.wait_quiet(since=0, timeout=30)
    await call.say("How is my report coming along?")
    await call.wait_quiet(timeout=30)
    await call.hangup()
    session = await admin.session(call.call_sid)
    sent = raw_usage(realtime.sessions[before:])

    conn = await asyncpg.connect(platform.database_url)
    try:
        events = [json.loads(r["payload"]) for r in await conn.fetch(
            "SELECT payload::text AS payload FROM call_events WHERE call_sid = $1 AND type = 'usage.reported'",
            call.call_sid)]  # fmt: skip
    finally:
        await conn.close()
    assert {e["source"] for e in events} == {"response", "transcription"}
    assert {e["model"] for e in events if e["source"] == "response"} == {DEFAULT_MODEL}
    by_kind: dict[str, float] = {}
    assert not any(e.get("usage") for e in events)  # no provider's usage block on the bus
    for e in events:
        for kind, usd in hand_cost(e, sent[e["ref"]]).items():
            by_kind[kind] = by_kind.get(kind, 0.0) + usd
    cost = session["cost"]
    print(f"cost by hand {by_kind}; shown {cost}")
    assert cost["total_usd"] == pytest.approx(sum(by_kind.values()), rel=1e-9, abs=1e-12)
    for kind, usd in by_kind.items():
        assert cost["usd"][kind] == pytest.approx(usd, rel=1e-9, abs=1e-12), kind
    assert cost["usd"]["other"] == 0
    assert cost["tokens"]["audio_out"] == sum(
        (sent[e["ref"]].get("output_token_details") or {}).get("audio_tokens", 0) for e in events)
    minutes = session["duration_s"] / 60
    assert cost["per_minute_usd"] == pytest.approx(cost["total_usd"] / minutes)
    assert cost["hosted_fee_usd"] == pytest.approx(0.09 * minutes, abs=1e-6)
    # The summary's cost is the same money, to the cent's ten-thousandth (it is stored per event to 1e-6).
    assert session["cost_usd"] == pytest.approx(cost["total_usd"], abs=1e-5)
    # The turn's time includes the tool's 0.4 s, counted as tool time.
    [turn] = session["turns"]
    assert turn["tools"] == 1 and 380 <= turn["tool_ms"] < turn["sent_ms"], turn


async def test_a_greeting_the_caller_hung_up_on_says_what_they_heard(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = Scenario(turns=[])
    before = len(realtime.sessions)
    call = await call_lab(platform)
    await poll(lambda: len(realtime.sessions) > before, 20, what="the Realtime session")
    sim = realtime.sessions[before]
    await poll(lambda: any(e["type"] == "response.done" for e in sim.server_events), 20,
               what="the greeting to be generated in full")
    await call.wait_heard(1000, timeout=20)
    await call.hangup()  # in the middle of the greeting

    session = await admin.session(call.call_sid)
    [greeting] = session["transcript"]
    assert greeting["interrupted"] and greeting["full_text"] == GREETING
    assert 900 <= greeting["heard_ms"] < greeting["audio_ms"] - 1000
    assert GREETING.startswith(greeting["text"]) and len(greeting["text"]) < len(GREETING)
