"""The Realtime simulator against a raw websockets client and the SDK's own types."""

from __future__ import annotations

import asyncio

import pytest
from dialtone_sim.audio import energy, silence
from dialtone_sim.oracle import OracleError, check_client_event, check_server_event
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario
from dialtone_sim.speech import VOICED_ENERGY, synthesize
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .rtclient import SESSION, client

pytestmark = pytest.mark.unit

SCRIPT = Scenario.from_dict({"turns": [
    {"caller": None, "agent": "Hello, table bookings."},
    {"caller": "A table for two please", "agent": "Booked for two.",
     "tools": [{"name": "book_table", "arguments": {"people": 2}}]},
    {"caller": "Thanks", "agent": "You are welcome, goodbye and have a very nice evening out."},
]})  # fmt: skip


@pytest.fixture
async def sim():
    async with RealtimeSimulator(SCRIPT, api_key="sk-test", speed=0, audio_chunk_ms=100) as s:
        yield s
        for session in s.sessions:
            assert not session.internal_errors
        assert not s.server_violations
        for session in s.sessions:
            for event in session.server_events:
                check_server_event(event)


async def test_full_turn_with_tool_call(sim: RealtimeSimulator) -> None:
    async with client(sim.url) as c:
        created = await c.wait_type("session.created")
        assert created[0]["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await c.send({"type": "session.update", "event_id": "evt_1", "session": SESSION})
        updated = (await c.wait_type("session.updated"))[0]["session"]
        assert updated["audio"]["output"]["format"] == {"type": "audio/pcmu"}

        await c.send({"type": "response.create"})  # greeting: consumes the caller=None turn
        await c.wait_type("response.done")
        session = sim.sessions[0]
        greeting_item = session.output_order[0]
        assert len(session.output_audio[greeting_item]) >= 8 * 400

        speech = synthesize("A table for two please", seed=1)
        await c.append(silence(200) + speech + silence(800))
        started = (await c.wait_type("input_audio_buffer.speech_started"))[0]
        assert started["audio_start_ms"] == 0  # 200 ms of silence, 300 ms of prefix padding
        stopped = (await c.wait_type("input_audio_buffer.speech_stopped"))[0]
        # Speech ends at its last voiced frame (real speech from espeak-ng ends in a little silence).
        frames = [speech[i : i + 160] for i in range(0, len(speech), 160)]
        last_voiced = max(i for i, frame in enumerate(frames) if energy(frame) > VOICED_ENERGY)
        speech_end_ms = 200 + (last_voiced + 1) * 20
        assert speech_end_ms + 500 <= stopped["audio_end_ms"] <= speech_end_ms + 560
        committed = (await c.wait_type("input_audio_buffer.committed"))[0]
        assert committed["item_id"] == started["item_id"] == stopped["item_id"]
        done = await c.wait_type("conversation.item.input_audio_transcription.completed")
        assert done[0]["transcript"] == "A table for two please"
        assert done[0]["usage"]["type"] == "tokens"

        args = (await c.wait_type("response.function_call_arguments.done"))[0]
        assert args["name"] == "book_table" and args["arguments"] == '{"people":2}'
        await c.wait_type("response.done", 2)
        await c.send({"type": "conversation.item.create",
                      "item": {"type": "function_call_output", "call_id": args["call_id"], "output": '{"ok":true}'}})  # fmt: skip
        await c.send({"type": "response.create"})
        transcripts = await c.wait_type("response.output_audio_transcript.done", 2)
        assert transcripts[1]["transcript"] == "Booked for two."
        final = (await c.wait_type("response.done", 3))[2]["response"]
        assert final["status"] == "completed"
        usage = final["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["output_token_details"]["audio_tokens"] > 0
        assert usage["input_token_details"]["cached_tokens"] > 0

    assert session.tool_outputs == [{"call_id": args["call_id"], "output": '{"ok":true}'}]
    assert bytes(session.input_audio) == silence(200) + speech + silence(800)
    assert len(session.output_order) == 2
    first, second = (bytes(session.output_audio[i]) for i in session.output_order)
    assert first[:1600] != second[:1600]
    assert not session.violations


@pytest.mark.expect_sim_errors(
    r"session 0: 'session.update' refused \(unknown_parameter\).*colour",
    r"session 0: 'input_audio_buffer.speech_started' refused \(invalid_value\)",
    r"session 0: beta-shaped 'session.update' event \(closed 4000\)",
    r"session 1: connected with the beta header",
    r"connection with a wrong API key \(HTTP 401\)",
)
async def test_invalid_and_beta_events(sim: RealtimeSimulator) -> None:
    async with client(sim.url) as c:
        await c.wait_type("session.created")
        await c.send({"type": "session.update", "event_id": "bad_1",
                      "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}, "colour": 1}}}})  # fmt: skip
        error = (await c.wait_type("error"))[0]["error"]
        assert error["code"] == "unknown_parameter" and error["event_id"] == "bad_1"
        assert "colour" in sim.sessions[0].violations[0] and sim.violations
        await c.send({"type": "input_audio_buffer.speech_started", "event_id": "bad_2"})  # a server event
        error = (await c.wait_type("error", 2))[1]["error"]
        assert error["code"] == "invalid_value" and error["param"] == "type" and error["event_id"] == "bad_2"
        await c.send(
            {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}
        )
        await c.wait(lambda: c.ws.close_code is not None)
        assert c.ws.close_code == 4000 and c.ws.close_reason == "beta_api_shape_disabled"
    # Refused events are kept apart: client_events holds only what the model took.
    assert sim.sessions[0].client_events == []
    assert [e.get("event_id") for e, _ in sim.sessions[0].refused_events] == ["bad_1", "bad_2", None]

    async with connect(
        sim.url, additional_headers={"Authorization": "Bearer sk-test", "OpenAI-Beta": "realtime=v1"}
    ) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        assert ws.close_code == 4000

    with pytest.raises(InvalidStatus) as rejected:
        async with connect(sim.url, additional_headers={"Authorization": "Bearer wrong"}):
            pass
    assert rejected.value.response.status_code == 401

    with pytest.raises(OracleError):
        check_client_event({"type": "response.audio.delta", "delta": ""})


@pytest.mark.expect_sim_errors(
    r"'conversation.item.truncate' refused \(invalid_value\): Invalid 'audio_end_ms': \d+ms is beyond",
    r"'conversation.item.truncate' refused \(invalid_value\): Invalid 'audio_end_ms': 0\. Expected",
)
async def test_active_response_errors_truncate_and_barge_in() -> None:
    async with RealtimeSimulator(SCRIPT, speed=1.0, audio_chunk_ms=100) as sim:
        async with client(sim.url, key=None) as c:
            await c.send({"type": "session.update", "session": SESSION})
            await c.wait_type("session.updated")
            await c.send({"type": "response.cancel", "event_id": "cx"})
            assert (await c.wait_type("error"))[0]["error"]["code"] == "response_cancel_not_active"
            await c.send({"type": "response.create"})
            await c.wait_type("response.output_audio.delta", 2)
            await c.send({"type": "response.create"})
            errors = await c.wait_type("error", 2)
            assert errors[1]["error"]["code"] == "conversation_already_has_active_response"

            session = sim.sessions[0]
            item = session.output_order[0]
            generated = len(session.output_audio[item]) // 8
            await c.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                          "audio_end_ms": generated + 5000})  # fmt: skip
            errors = await c.wait_type("error", 3)
            assert (
                errors[2]["error"]["code"] == "invalid_value"
                and "audio_end_ms" in errors[2]["error"]["message"]
            )
            # Trap 8: a truncate to 0 ms (nothing heard) is refused too.
            await c.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                          "audio_end_ms": 0})  # fmt: skip
            assert (await c.wait_type("error", 4))[3]["error"]["param"] == "audio_end_ms"
            await c.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item,
                    "content_index": 0,
                    "audio_end_ms": 100,
                }
            )
            assert (await c.wait_type("conversation.item.truncated"))[0]["audio_end_ms"] == 100
            assert session.truncations[0][:2] == (item, 100)

            # Barge-in: caller speech while the (real-time paced) greeting is still playing.
            interruption = synthesize("Sorry to interrupt", seed=3)
            await c.append(interruption[:1600])
            await c.wait_type("input_audio_buffer.speech_started")
            # The rest of the utterance right away: its turn is answered once the cancel lands.
            await c.append(interruption[1600:] + silence(600))
            done = (await c.wait_type("response.done"))[0]["response"]
            assert done["status"] == "cancelled"
            assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
            assert len(session.output_audio[item]) < len(synthesize("Hello, table bookings.", 0))
            call = (await c.wait_type("response.function_call_arguments.done"))[0]
            assert call["name"] == "book_table"  # the caller's turn was answered automatically
        # The races are refused but are not violations; refused events never count as accepted.
        refused = [(e["type"], err["code"]) for e, err in session.refused_events]
        assert refused[:2] == [("response.cancel", "response_cancel_not_active"),
                               ("response.create", "conversation_already_has_active_response")]  # fmt: skip
        assert [e["type"] for e in session.client_events if e["type"] != "input_audio_buffer.append"] == [
            "session.update", "response.create", "conversation.item.truncate"]  # fmt: skip
        assert len(sim.violations) == 2 and not sim.server_violations


async def test_trap5_format_reset_and_text_input(sim: RealtimeSimulator) -> None:
    async with client(sim.url) as c:
        await c.send({"type": "session.update", "session": SESSION})
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}},
            }
        )
        updated = await c.wait_type("session.updated", 2)
        assert updated[1]["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert updated[1]["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        await c.send({"type": "conversation.item.create",
                      "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "caller pressed 1"}]}})  # fmt: skip
        await c.wait_type("conversation.item.done")
        await c.send({"type": "response.create"})
        await c.wait_type("response.done")
    session = sim.sessions[0]
    assert session.text_inputs == ["caller pressed 1"]
    # The reply really came as 24 kHz PCM: 6x the bytes of the same speech in mu-law.
    assert len(session.output_audio[session.output_order[0]]) == 6 * len(
        synthesize("Hello, table bookings.", 1001)
    )


async def test_expiry_drop_idle_and_many_sessions() -> None:
    async with RealtimeSimulator(None, speed=0, expire_after_s=0.3, validate=False) as sim:
        async with client(sim.url, key=None) as c:
            await c.send({"type": "session.update", "session": {**SESSION, "audio": {
                **SESSION["audio"], "input": {**SESSION["audio"]["input"], "turn_detection": {
                    "type": "server_vad", "idle_timeout_ms": 1000}}}}})  # fmt: skip
            await c.send({"type": "response.create"})
            await c.wait_type("response.done")
            generated = len(sim.sessions[0].output_audio[sim.sessions[0].output_order[0]]) // 8
            await c.append(silence(generated + 1100))
            timeout = (await c.wait_type("input_audio_buffer.timeout_triggered"))[0]
            assert timeout["audio_end_ms"] >= generated + 1000
            error = (await c.wait_type("error", timeout=3))[0]["error"]
            assert error["code"] == "session_expired"
            await c.wait(lambda: c.ws.close_code is not None)
            assert c.ws.close_code == 1001

    async with RealtimeSimulator(None, speed=0, validate=False) as sim:
        clients = [client(sim.url, key=None) for _ in range(50)]
        opened = [await cm.__aenter__() for cm in clients]
        for c in opened:
            await c.send({"type": "response.create"})
        for c in opened:
            await c.wait_type("response.done")
        await sim.drop(sim.sessions[0])
        await opened[0].wait(lambda: opened[0].ws.close_code is not None)
        assert sim.sessions[0].closed.is_set()
        for cm in clients:
            await cm.__aexit__(None, None, None)
        await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in sim.sessions)), 5)
        assert all(not s.internal_errors for s in sim.sessions)


async def test_a_tagged_call_follows_its_own_script_beside_others(sim: RealtimeSimulator) -> None:
    """Calls whose caller's silence carries a tag (``dial(tag=)``) each follow the script held for
    it, at the same time; an untagged call follows the simulator's ``scenario``."""
    from dialtone_sim.audio import tag_frame

    sim.scripts = {tag: Scenario.from_dict({"turns": [{"caller": "Hello there", "agent": f"Call {tag} speaking."}]})
                   for tag in (7, 9)}  # fmt: skip
    speech = synthesize("Hello there", seed=3)

    async def call(tag: int | None) -> str:
        async with client(sim.url) as c:
            await c.wait_type("session.created")
            await c.send({"type": "session.update", "event_id": "evt_1", "session": SESSION})
            await c.wait_type("session.updated")
            head = tag_frame(tag, 0) + tag_frame(tag, 1) if tag is not None else silence(40)
            await c.append(head[:100])  # a tag may straddle two appends
            await c.append(head[100:] + silence(160) + speech + silence(800))
            return (await c.wait_type("response.output_audio_transcript.done"))[0]["transcript"]

    said = await asyncio.gather(call(7), call(9), call(None))
    assert said == ["Call 7 speaking.", "Call 9 speaking.", "Hello, table bookings."]
