"""The real-world shapes the Realtime simulator produces on script: several output items in one
response, failed and incomplete responses, failed transcriptions, rate limits, irregular audio."""

from __future__ import annotations

import base64

import pytest
from dialtone_sim.audio import silence
from dialtone_sim.oracle import check_server_event
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.speech import synthesize

from .rtclient import SESSION, Client, client

pytestmark = pytest.mark.unit

BOOK = ToolCall("book_table", {"people": 2})
NOTE = ToolCall("book_table", {"people": 3})


async def start(sim: RealtimeSimulator, c: Client) -> None:
    await c.send({"type": "session.update", "session": SESSION})
    await c.wait_type("session.updated")


async def caller_turn(c: Client, seed: int = 1) -> None:
    """The caller says something; server VAD commits it and starts the answer."""
    await c.append(silence(200) + synthesize("Hello there", seed=seed) + silence(800))
    await c.wait_type("input_audio_buffer.committed")


def done(c: Client, n: int) -> dict:
    return c.of("response.done")[n]["response"]


def assert_valid(sim: RealtimeSimulator) -> None:
    for session in sim.sessions:
        for event in session.server_events:
            check_server_event(event)


async def test_a_preamble_and_the_answer_are_two_message_items_of_one_response() -> None:
    scenario = Scenario(turns=[Turn(caller="Hello there", agent="Your table is booked.", preamble="Let me see.")])
    async with RealtimeSimulator(scenario, speed=0) as sim, client(sim.url, key=None) as c:
        await start(sim, c)
        await caller_turn(c)
        await c.wait_type("response.done")
        response = done(c, 0)
        assert response["status"] == "completed" and len(c.of("response.created")) == 1
        assert [(i["type"], i["role"], i["status"]) for i in response["output"]] == [
            ("message", "assistant", "completed"), ("message", "assistant", "completed")]  # fmt: skip
        assert [i["content"][0]["transcript"] for i in response["output"]] == ["Let me see.", "Your table is booked."]
        added = c.of("response.output_item.added")
        assert [e["output_index"] for e in added] == [0, 1]
        # Each item's audio is its own, and the second follows the first.
        session = sim.sessions[0]
        assert session.output_order == [i["id"] for i in response["output"]]
        deltas = [e["item_id"] for e in c.of("response.output_audio.delta")]
        assert deltas == sorted(deltas, key=session.output_order.index)
        assert_valid(sim)


async def test_speech_plus_a_function_call_then_parallel_calls_continue_once_all_outputs_are_in() -> None:
    scenario = Scenario(turns=[
        Turn(caller="Hello there", agent="Done.", tools=[BOOK], preamble="One moment."),
        Turn(caller="Two more", agent="Both booked.", tools=[BOOK, NOTE], parallel_tools=True),
    ])  # fmt: skip
    async with RealtimeSimulator(scenario, speed=0) as sim, client(sim.url, key=None) as c:
        await start(sim, c)
        await caller_turn(c)
        await c.wait_type("response.done")
        first = done(c, 0)
        assert [i["type"] for i in first["output"]] == ["message", "function_call"]
        assert first["output"][0]["content"][0]["transcript"] == "One moment."
        call_id = first["output"][1]["call_id"]
        await c.send({"type": "conversation.item.create",
                      "item": {"type": "function_call_output", "call_id": call_id, "output": "{}"}})  # fmt: skip
        await c.send({"type": "response.create"})
        await c.wait_type("response.done", 2)
        assert done(c, 1)["output"][0]["content"][0]["transcript"] == "Done."

        await caller_turn(c, seed=2)
        await c.wait_type("response.done", 3)
        parallel = done(c, 2)["output"]
        assert [(i["type"], i["arguments"]) for i in parallel] == [
            ("function_call", '{"people":2}'), ("function_call", '{"people":3}')]  # fmt: skip
        # One output is not enough to continue: the model would answer without the other.
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": parallel[0]["call_id"], "output": "{}"}})  # fmt: skip
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": parallel[1]["call_id"], "output": "{}"}})  # fmt: skip
        await c.send({"type": "response.create"})
        await c.wait_type("response.done", 4)
        assert done(c, 3)["output"][0]["content"][0]["transcript"] == "Both booked."
        assert_valid(sim)


async def test_a_missing_tool_output_does_not_continue_the_tool_turn() -> None:
    scenario = Scenario(turns=[Turn(caller="Hello there", agent="Both booked.", tools=[BOOK, NOTE],
                                    parallel_tools=True)], fallback_agent="Anything else?")  # fmt: skip
    async with RealtimeSimulator(scenario, speed=0) as sim, client(sim.url, key=None) as c:
        await start(sim, c)
        await caller_turn(c)
        await c.wait_type("response.done")
        calls = done(c, 0)["output"]
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": calls[0]["call_id"], "output": "{}"}})  # fmt: skip
        await c.send({"type": "response.create"})
        await c.wait_type("response.done", 2)
        assert done(c, 1)["output"][0]["content"][0]["transcript"] == "Anything else?"


async def test_failed_and_incomplete_responses_and_a_failed_transcription() -> None:
    scenario = Scenario(turns=[
        Turn(caller="Hello there", agent="Sorry for the wait, here I am.", failures=1, transcription_fails=True),
        Turn(caller="And now?", agent="This answer is long and will be cut off half way through.",
             incomplete="max_output_tokens"),
    ])  # fmt: skip
    async with RealtimeSimulator(scenario, speed=0) as sim, client(sim.url, key=None) as c:
        await start(sim, c)
        await caller_turn(c)
        failed = (await c.wait_type("conversation.item.input_audio_transcription.failed"))[0]
        assert failed["error"]["code"] == "audio_unintelligible"
        assert failed["item_id"] == c.of("input_audio_buffer.committed")[0]["item_id"]
        assert not c.of("conversation.item.input_audio_transcription.completed")
        await c.wait_type("response.done")
        response = done(c, 0)
        assert response["status"] == "failed" and response["output"] == []
        assert response["status_details"]["type"] == "failed"
        assert response["status_details"]["error"]["type"] == "server_error"
        await c.send({"type": "response.create"})  # the retry answers the same turn
        await c.wait_type("response.done", 2)
        assert done(c, 1)["output"][0]["content"][0]["transcript"] == "Sorry for the wait, here I am."

        await caller_turn(c, seed=2)
        await c.wait_type("response.done", 3)
        cut = done(c, 2)
        assert cut["status"] == "incomplete"
        assert cut["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        item = cut["output"][0]
        assert item["status"] == "incomplete"
        full = "This answer is long and will be cut off half way through."
        said = item["content"][0]["transcript"]
        assert said and full.startswith(said) and len(said) < len(full)
        assert_valid(sim)


async def test_rate_limits_follow_every_response_and_audio_deltas_can_be_irregular() -> None:
    pattern = (37, 803, 1600, 3, 400)
    scenario = Scenario(turns=[Turn(caller=None, agent="Hello, table bookings.", audio_chunks=pattern),
                               Turn(caller=None, agent="Hello again.")])  # fmt: skip
    async with RealtimeSimulator(scenario, speed=0) as sim, client(sim.url, key=None) as c:
        await start(sim, c)
        for n in (1, 2):
            await c.send({"type": "response.create"})
            await c.wait_type("response.done", n)
        kinds = [e["type"] for e in c.events]
        created = [i for i, k in enumerate(kinds) if k == "response.created"]
        assert [kinds[i + 1] for i in created] == ["rate_limits.updated", "rate_limits.updated"]
        limits = [{r["name"]: r for r in e["rate_limits"]} for e in c.of("rate_limits.updated")]
        assert limits[1]["requests"]["remaining"] == limits[0]["requests"]["remaining"] - 1
        assert limits[1]["tokens"]["remaining"] < limits[0]["tokens"]["remaining"] <= limits[0]["tokens"]["limit"]

        first, second = done(c, 0)["output"][0]["id"], done(c, 1)["output"][0]["id"]
        sizes = [len(base64.b64decode(e["delta"])) for e in c.of("response.output_audio.delta") if e["item_id"] == first]
        assert sizes[: len(pattern)] == list(pattern)
        regular = [len(base64.b64decode(e["delta"])) for e in c.of("response.output_audio.delta") if e["item_id"] == second]
        assert set(regular[:-1]) == {800}  # the simulator's regular 100 ms
        session = sim.sessions[0]
        assert b"".join(base64.b64decode(e["delta"]) for e in c.of("response.output_audio.delta")
                        if e["item_id"] == first) == bytes(session.output_audio[first])  # fmt: skip
        assert_valid(sim)


async def test_deleting_an_item_removes_it_from_the_conversation() -> None:
    async with RealtimeSimulator(Scenario(turns=[Turn(caller=None, agent="Hello.")]), speed=0) as sim:
        async with client(sim.url, key=None) as c:
            await start(sim, c)
            await c.send({"type": "response.create"})
            await c.wait_type("response.done")
            item = done(c, 0)["output"][0]["id"]
            await c.send({"type": "conversation.item.delete", "item_id": item})
            assert (await c.wait_type("conversation.item.deleted"))[0]["item_id"] == item
        session = sim.sessions[0]
        assert session.deleted == [item] and item not in session.items
