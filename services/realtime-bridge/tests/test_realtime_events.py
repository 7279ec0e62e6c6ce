"""Every client event the bridge builds is one the GA Realtime API accepts (the SDK as oracle)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from dialtone_bridge import realtime_engine as rt
from dialtone_bridge.agents import Agent, AgentBook
from dialtone_proto.tools import ToolSpec
from dialtone_sim.oracle import OracleError, check_client_event

pytestmark = pytest.mark.unit

AGENTS_DIR = Path(__file__).resolve().parents[3] / "agents"
TOOLS = [
    ToolSpec(
        name="lookup_customer",
        description="Find the caller's account by phone number.",
        parameters={"type": "object", "properties": {"phone": {"type": "string"}}, "required": ["phone"]},
        timeout_s=5,
    ),
    ToolSpec(name="end_call", description="Hang up.", parameters={"type": "object", "properties": {}}, timeout_s=2),
]


def _check(text: str) -> dict:
    event = orjson.loads(text)
    check_client_event(event)
    return event


def _agents() -> list[Agent]:
    return list(AgentBook.load(AGENTS_DIR).agents.values())


@pytest.mark.parametrize("agent", _agents(), ids=lambda a: a.name)
def test_session_update_for_each_repo_agent_is_valid_ga(agent: Agent) -> None:
    event = _check(rt.session_update(rt.session_config(agent, TOOLS, "gpt-realtime", "gpt-4o-mini-transcribe")))
    session = event["session"]

    assert session["type"] == "realtime"
    assert session["model"] == "gpt-realtime"
    assert session["instructions"] == agent.instructions
    assert session["audio"]["output"]["voice"] == agent.voice
    assert [t["name"] for t in session["tools"]] == ["lookup_customer", "end_call"]


@pytest.mark.parametrize("agent", _agents(), ids=lambda a: a.name)
def test_session_always_carries_pcmu_both_ways(agent: Agent) -> None:
    # Trap 5: an update without formats resets them to 24 kHz PCM, static on a phone line.
    for tools in (TOOLS, []):
        session = rt.session_config(agent, tools, "gpt-realtime", "gpt-4o-mini-transcribe")
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}


def test_session_for_semantic_vad_and_a_regional_language_is_valid_ga() -> None:
    agent = Agent(
        name="ja", instructions="はい。", voice="cedar", language="ja-JP", turn_detection={"type": "semantic_vad", "eagerness": "low"}
    )
    event = _check(rt.session_update(rt.session_config(agent, [], "gpt-realtime", "gpt-4o-mini-transcribe")))
    audio_in = event["session"]["audio"]["input"]

    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "ja"}
    assert audio_in["turn_detection"]["type"] == "semantic_vad"
    assert audio_in["turn_detection"]["eagerness"] == "low"


def test_server_vad_session_uses_the_agent_silence() -> None:
    agent = Agent(name="es", instructions="Hola.", language="es")
    event = _check(rt.session_update(rt.session_config(agent, [], "gpt-realtime", "gpt-4o-mini-transcribe")))

    assert event["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600


def test_append_carries_the_audio_as_base64() -> None:
    audio = bytes(range(256)) * 2
    event = _check(rt.append(audio))

    assert event["type"] == "input_audio_buffer.append"
    assert base64.b64decode(event["audio"]) == audio


def test_truncate() -> None:
    assert _check(rt.truncate("item_9", 1234)) == {
        "type": "conversation.item.truncate",
        "item_id": "item_9",
        "content_index": 0,
        "audio_end_ms": 1234,
    }


@pytest.mark.parametrize("output", [{"plan": "pro", "ok": True}, {"error": "timeout"}, "done", None, [1, 2]])
def test_function_output_is_a_json_string(output: object) -> None:
    event = _check(rt.function_output("call_1", output))

    assert event["item"]["type"] == "function_call_output"
    assert event["item"]["call_id"] == "call_1"
    assert isinstance(event["item"]["output"], str)
    assert orjson.loads(event["item"]["output"]) == output


@pytest.mark.parametrize("item_id", [None, "dtmf_1"])
def test_user_text(item_id: str | None) -> None:
    event = _check(rt.user_text('The caller pressed "5".', item_id))

    assert event["item"]["role"] == "user"
    assert event["item"]["content"] == [{"type": "input_text", "text": 'The caller pressed "5".'}]
    assert event["item"].get("id") == item_id


@pytest.mark.parametrize("item_id", [None, "restored_3"])
def test_assistant_text(item_id: str | None) -> None:
    event = _check(rt.assistant_text("How can I help?", item_id))

    assert event["item"]["role"] == "assistant"
    assert event["item"]["content"] == [{"type": "output_text", "text": "How can I help?"}]
    assert event["item"].get("id") == item_id


def test_response_create_plain() -> None:
    assert _check(rt.response_create()) == {"type": "response.create"}


def test_response_create_with_instructions() -> None:
    event = _check(rt.response_create("Greet the caller."))

    assert event["response"] == {"instructions": "Greet the caller."}


@pytest.mark.parametrize("instructions", [None, "Say you are checking."])
def test_response_create_out_of_band_stays_out_of_the_conversation(instructions: str | None) -> None:
    event = _check(rt.response_create(instructions, out_of_band=True))

    assert event["response"]["conversation"] == "none"
    assert event["response"]["output_modalities"] == ["audio"]
    assert event["response"]["tool_choice"] == "none"
    assert event["response"].get("instructions") == instructions


def test_response_cancel() -> None:
    assert _check(rt.response_cancel()) == {"type": "response.cancel"}


def test_the_oracle_would_catch_a_beta_shape() -> None:
    # Guards the guard: the check above must be able to fail.
    with pytest.raises(OracleError):
        check_client_event({"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}})
