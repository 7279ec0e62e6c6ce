"""The OpenAI Realtime engine (GA interface only): one WebSocket per call, its JSON parsed here into
the engine-neutral events of ``engine.py`` and the bridge's commands built here into client events.

Every client event sent must validate against ``openai.types.realtime.RealtimeClientEvent`` with no
extra keys; the end-to-end tests check that on every event of a real call. Server events are read
as JSON and mapped field by field (:func:`parse`): the audio deltas are 50 a second per call, and a
full model validation of each would cost more CPU than the rest of the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dialtone_bridge import metrics as m
from dialtone_bridge.agents import Agent
from dialtone_bridge.engine import (
    AgentAudio,
    AgentAudioDone,
    AgentText,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerText,
    Closed,
    EngineError,
    EngineEvent,
    EngineUnavailable,
    HistoryLine,
    ItemPlaced,
    RateLimits,
    ReplyFinished,
    ReplyItem,
    ReplyStarted,
    SessionSpec,
    ToolCallRequested,
    Usage,
)
from dialtone_bridge.realtime_warm import WarmSockets
from dialtone_bridge.socket_engine import SocketConnection, open_socket

log = logging.getLogger("dialtone.bridge.realtime")

AUDIO_FORMAT = {"type": "audio/pcmu"}
HISTORY_LINES = 60  # lines of the conversation so far given to a new socket


# ---- client events ---------------------------------------------------------------------------


def session_config(agent: Agent, tools: Sequence[Any], model: str, transcription_model: str, voice: str | None = None) -> dict[str, Any]:
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
            "output": {"format": AUDIO_FORMAT, "voice": voice or agent.voice},
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
                             "audio_end_ms": audio_end_ms}  # fmt: skip
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


# ---- server events ---------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _n(d: dict[str, Any] | None, key: str) -> int:
    value = (d or {}).get(key) or 0
    return int(value) if isinstance(value, int | float) else 0


def token_counts(usage: dict[str, Any]) -> dict[str, int]:
    """Tokens of one usage block by billing kind (:data:`KINDS`). Cached tokens are a subset of
    input tokens, counted apart from them. A usage with no per-modality details (transcription)
    counts as audio in, text out."""
    inp = usage.get("input_token_details") or {}
    out = usage.get("output_token_details") or {}
    cached = inp.get("cached_tokens_details") or {}
    if inp or out:
        text_in, audio_in = _n(inp, "text_tokens"), _n(inp, "audio_tokens")
        text_cached, audio_cached = _n(cached, "text_tokens"), _n(cached, "audio_tokens")
        if not cached and _n(inp, "cached_tokens"):
            text_cached = min(text_in, _n(inp, "cached_tokens"))
        text_out = _n(out, "text_tokens")
        audio_out = _n(out, "audio_tokens")
        if not out:
            text_out = _n(usage, "output_tokens")
    else:
        text_in, audio_in, text_cached, audio_cached = 0, _n(usage, "input_tokens"), 0, 0
        text_out, audio_out = _n(usage, "output_tokens"), 0
    return {
        "text_in": max(text_in - text_cached, 0), "text_cached": text_cached,
        "audio_in": max(audio_in - audio_cached, 0), "audio_cached": audio_cached,
        "text_out": text_out, "audio_out": audio_out,
    }



def _usage(usage: Any) -> Usage | None:
    return Usage(tokens=token_counts(usage)) if isinstance(usage, dict) and usage else None


def _reply_item(item: dict[str, Any]) -> ReplyItem | None:
    kind = item.get("type")
    if kind == "message" and item.get("role") == "assistant":
        text = " ".join(str(c.get("transcript") or c.get("text") or "") for c in item.get("content") or [])
        return ReplyItem("message", str(item["id"]), item.get("status"), text=text)
    if kind == "function_call":
        return ReplyItem(
            "function_call", str(item.get("id") or ""), item.get("status"), call_id=str(item["call_id"]),
            name=str(item["name"]), arguments=str(item.get("arguments") or ""),
        )  # fmt: skip
    return None


def _reply_finished(response: dict[str, Any]) -> ReplyFinished:
    status = response.get("status")
    details = response.get("status_details") or {}
    error = details.get("error") or {}
    items = tuple(i for i in (_reply_item(x) for x in response.get("output") or []) if i is not None)
    return ReplyFinished(
        reply_id=str(response.get("id") or ""),
        status=status if status in ("completed", "cancelled", "failed", "incomplete") else "failed",
        items=items,
        usage=_usage(response.get("usage")),
        reason=details.get("reason"),
        error_code=error.get("code") or error.get("type"),
        error_message=error.get("message"),
    )


def parse(ev: dict[str, Any]) -> EngineEvent | None:
    """One Realtime server event as an engine-neutral event; None for what the bridge does not use.

    Raises:
        KeyError, TypeError, ValueError: a malformed event (the caller counts and skips it).
    """
    kind = ev.get("type")
    if kind == "response.output_audio.delta":
        return AgentAudio(str(ev.get("response_id") or ""), ev["item_id"], base64.b64decode(ev.get("delta") or ""))
    if kind == "response.output_audio.done":
        return AgentAudioDone(ev["item_id"])
    if kind == "input_audio_buffer.speech_started":
        return CallerSpeechStarted(ev.get("item_id"), _number(ev.get("audio_start_ms")))
    if kind == "input_audio_buffer.speech_stopped":
        return CallerSpeechStopped(_number(ev.get("audio_end_ms")))
    if kind == "input_audio_buffer.committed":
        return ItemPlaced(ev["item_id"])
    if kind == "conversation.item.added":
        return ItemPlaced(ev["item"]["id"])
    if kind == "conversation.item.input_audio_transcription.completed":
        text = str(ev.get("transcript") or "").strip()
        return CallerText(ev["item_id"], text, None if text else "empty transcript", _usage(ev.get("usage")))
    if kind == "conversation.item.input_audio_transcription.failed":
        error = ev.get("error") or {}
        return CallerText(ev["item_id"], "", str(error.get("code") or error.get("type") or "failed"))
    if kind == "rate_limits.updated":
        return RateLimits({
            str(x["name"]): x["remaining"] for x in ev.get("rate_limits") or []
            if isinstance(x.get("remaining"), int) and x.get("name") in ("requests", "tokens")
        })  # fmt: skip
    if kind == "response.created":
        return ReplyStarted(ev["response"]["id"])
    if kind == "response.output_audio_transcript.done":
        return AgentText(ev["item_id"], str(ev.get("transcript") or ""))
    if kind == "response.output_item.done":
        item = ev.get("item") or {}
        # Arguments are final only in a completed item: a cancelled response may cut them off.
        if item.get("type") == "function_call" and item.get("status") == "completed":
            return ToolCallRequested(item["call_id"], item["name"], str(item.get("arguments") or ""), item.get("id"))
        return None
    if kind == "response.done":
        return _reply_finished(ev["response"])
    if kind == "error":
        error = ev.get("error") or {}
        return EngineError(
            str(error.get("code") or error.get("type") or "unknown"), str(error.get("message") or ""),
            error.get("event_id"),
        )  # fmt: skip
    return None


# ---- the connection --------------------------------------------------------------------------


class RealtimeConnection(SocketConnection):
    """A call's connection to the Realtime API (:class:`dialtone_bridge.engine.ModelConnection`).

    Args:
        url: the Realtime WebSocket URL (``OPENAI_REALTIME_URL``).
        model: the model (``OPENAI_REALTIME_MODEL``).
        transcription_model: the model transcribing the caller.
        api_key: the API key; None for a simulator that needs none.
        log: the call's logger.
        warm: the bridge's warm sockets (``REALTIME_WARM_SOCKETS``): ``open`` takes one if it can.
    """

    def __init__(
        self, url: str, model: str, transcription_model: str, api_key: str | None, log: logging.LoggerAdapter,
        warm: WarmSockets | None = None,
    ) -> None:
        self.url, self.model, self.transcription_model = url, model, transcription_model
        self._key, self.log, self._warm = api_key, log, warm
        self._ws: ClientConnection | None = None
        self._spec: SessionSpec | None = None

    async def open(self, spec: SessionSpec, history: Sequence[HistoryLine] = ()) -> None:
        ws = None
        try:
            ws = self._warm.take() if self._warm is not None and self._warm.model == self.model else None
            if ws is not None:
                try:  # a warm socket: only the session's configuration is left to do
                    await ws.send(session_update(self._session(spec)))
                except ConnectionClosed:
                    ws = None  # it died just now: open one as without a pool
            if ws is None:
                sep = "&" if "?" in self.url else "?"
                ws = await open_socket(f"{self.url}{sep}model={self.model}", self._key)
                await ws.send(session_update(self._session(spec)))
            await self._await_session(ws)
            for line in history[-HISTORY_LINES:]:
                await ws.send(user_text(line.text) if line.role == "caller" else assistant_text(line.text))
            self._ws, ws, self._spec = ws, None, spec
        except (OSError, InvalidHandshake, InvalidStatus, ConnectionClosed, TimeoutError, ValueError) as exc:
            raise EngineUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            if ws is not None:  # a socket that was not handed over must not linger (and bill)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)

    def _session(self, spec: SessionSpec) -> dict[str, Any]:
        return session_config(spec.agent, spec.tools, self.model, self.transcription_model, spec.voice)

    async def _await_session(self, ws: ClientConnection) -> None:
        """Read until ``session.updated`` and check the formats really are mu-law."""
        async with asyncio.timeout(10):
            async for raw in ws:
                event = orjson.loads(raw)
                kind = event.get("type")
                if kind == "session.updated":
                    audio = event["session"].get("audio", {})
                    formats = (audio.get("input", {}).get("format", {}), audio.get("output", {}).get("format", {}))
                    if any(f.get("type") != "audio/pcmu" for f in formats):
                        raise EngineUnavailable(f"session formats are {formats}, not audio/pcmu")
                    return
                if kind == "error":
                    raise EngineUnavailable(f"session.update refused: {event.get('error')}")
        raise EngineUnavailable("socket closed before session.updated")

    async def events(self) -> AsyncIterator[EngineEvent]:
        ws = self._ws
        if ws is None:
            yield Closed("not open")
            return
        cause = "closed"
        try:
            async for raw in ws:
                try:
                    event = orjson.loads(raw)
                    if not isinstance(event, dict):
                        raise TypeError("not an object")
                except (orjson.JSONDecodeError, TypeError):
                    m.REALTIME_ERRORS.labels("bad_event").inc()
                    self.log.warning("non-JSON message from the Realtime API: %.100r", raw)
                    continue
                try:
                    parsed = parse(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    # One event we cannot use must not end the conversation.
                    m.REALTIME_ERRORS.labels("bad_event").inc()
                    self.log.error("could not read a %s event: %r", event.get("type"), exc)
                    continue
                if isinstance(parsed, EngineError) and parsed.code == "session_expired":
                    cause = "session_expired"
                if parsed is not None:
                    yield parsed
        except ConnectionClosed as exc:
            if cause == "closed":
                cause = f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}"
        if self._ws is ws:
            self._ws = None
        yield Closed(cause)

    async def append_audio(self, audio: bytes) -> bool:
        return await self._send(append(audio))

    async def reply(self, request_id: str, instructions: str | None, *, out_of_band: bool = False) -> bool:
        return await self._send(response_create(instructions, out_of_band=out_of_band, event_id=request_id))

    async def cancel_reply(self) -> bool:
        return await self._send(response_cancel())

    async def tool_result(self, call_id: str, output: Any) -> bool:
        return await self._send(function_output(call_id, output))

    async def heard(self, item_id: str, audio_ms: int, request_id: str) -> bool:
        return await self._send(truncate(item_id, audio_ms, request_id))

    async def forget(self, item_id: str) -> bool:
        return await self._send(delete_item(item_id))

    async def caller_text(self, item_id: str, text: str) -> bool:
        return await self._send(user_text(text, item_id))

    async def update(self, spec: SessionSpec) -> bool:
        self._spec = spec
        return await self._send(session_update(self._session(spec)))

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
