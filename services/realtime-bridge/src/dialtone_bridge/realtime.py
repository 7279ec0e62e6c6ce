"""The OpenAI Realtime edge (GA interface only): connecting, and building the client events the
bridge sends. Every event here must validate against ``openai.types.realtime.RealtimeClientEvent``
with no extra keys; the end-to-end tests check that on every event of a real call."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from dialtone_proto.tools import ToolSpec
from websockets.asyncio.client import ClientConnection, connect

from dialtone_bridge.agents import Agent

AUDIO_FORMAT = {"type": "audio/pcmu"}


async def open_socket(url: str, model: str, api_key: str | None) -> ClientConnection:
    """Open one Realtime socket. No compression: audio does not compress and deflate costs CPU."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sep = "&" if "?" in url else "?"
    return await connect(
        f"{url}{sep}model={model}",
        additional_headers=headers,
        compression=None,
        max_size=16 * 1024 * 1024,
        open_timeout=10,
        ping_interval=20,
        ping_timeout=20,
        close_timeout=2,
    )


def session_config(agent: Agent, tools: list[ToolSpec], model: str, transcription_model: str) -> dict[str, Any]:
    """The full session for an agent. Formats are always included: an update without them resets
    the formats to 24 kHz PCM, which a phone line plays as static."""
    return {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": agent.instructions,
        "audio": {
            "input": {
                "format": AUDIO_FORMAT,
                "transcription": {"model": transcription_model, "language": agent.language.split("-")[0]},
                "turn_detection": agent.turn_detection_config(),
            },
            "output": {"format": AUDIO_FORMAT, "voice": agent.voice},
        },
        "tools": [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in tools
        ],
        "tool_choice": "auto",
    }


def session_update(session: dict[str, Any]) -> str:
    return orjson.dumps({"type": "session.update", "session": session}).decode()


def append(audio: bytes) -> str:
    # The hot path (50 a second per call): build the JSON by hand, base64 needs no escaping.
    return '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio).decode() + '"}'


def truncate(item_id: str, audio_end_ms: int, event_id: str | None = None) -> str:
    """Cut ``item_id`` at what the caller heard; ``event_id`` names the request in a refusal."""
    event: dict[str, Any] = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                             "audio_end_ms": audio_end_ms}
    if event_id is not None:
        event["event_id"] = event_id
    return orjson.dumps(event).decode()


def delete_item(item_id: str) -> str:
    """Take an item out of the conversation (agent audio the caller never heard any of)."""
    return orjson.dumps({"type": "conversation.item.delete", "item_id": item_id}).decode()


def function_output(call_id: str, output: Any) -> str:
    return orjson.dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()},
        }
    ).decode()


def user_text(text: str, item_id: str | None = None) -> str:
    item: dict[str, Any] = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def assistant_text(text: str, item_id: str | None = None) -> str:
    item: dict[str, Any] = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def response_create(instructions: str | None = None, *, out_of_band: bool = False, event_id: str | None = None) -> str:
    """Ask for a response. ``instructions`` steer this one response (greeting, filler, goodbye);
    ``out_of_band`` keeps it out of the conversation (a filler while a tool runs); ``event_id``
    lets an ``error`` be matched to this request."""
    event: dict[str, Any] = {"type": "response.create"}
    if event_id:
        event["event_id"] = event_id
    response: dict[str, Any] = {}
    if instructions:
        response["instructions"] = instructions
    if out_of_band:
        response["conversation"] = "none"
        response["output_modalities"] = ["audio"]
        response["tool_choice"] = "none"
    if response:
        event["response"] = response
    return orjson.dumps(event).decode()


def response_cancel() -> str:
    return '{"type":"response.cancel"}'
