"""One simulated Realtime API conversation: client events in, server events out.

:class:`SimSession` keeps every record a test may inspect (the public attributes) and handles
the client events; what the model says is produced by :mod:`.realtime_responses`. All state is
touched only from the event loop, so event handlers run without locks; a handler that needs to
decide "is a response active?" does so synchronously, before its first ``await``.

A client event is either accepted, and then kept in ``client_events``, or refused with an
``error`` event, as the real API does, and then kept with that error in ``refused_events``
(never in ``client_events``): a test asserting on ``client_events`` asserts on what the model
really took. A handler refuses by raising :class:`Refusal` before it changes any state.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import time
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import energy
from .oracle import OracleError, check_client_event, check_server_event
from .realtime_responses import ResponseRun, bytes_per_ms, start_response
from .scenario import Scenario, Turn, session_script, tagged_script
from .speech import VOICED_ENERGY
from .vad import ServerVad

if TYPE_CHECKING:
    from .realtime import RealtimeSimulator

__all__ = ["SimSession"]

log = logging.getLogger(__name__)

PCM24 = {"type": "audio/pcm", "rate": 24000}
_DEFAULT_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
_SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 300}
# Keys and event types of the retired beta interface (PROTOCOLS.md 2).
_BETA_SESSION_KEYS = {
    "input_audio_format", "output_audio_format", "input_audio_transcription",
    "turn_detection", "voice", "modalities",
}  # fmt: skip
_BETA_RESPONSE_KEYS = {"modalities", "voice", "output_audio_format"}
# Refusals that server VAD makes unavoidable: a client meets them in any real call.
RACES = {"conversation_already_has_active_response", "response_cancel_not_active"}


class Refusal(Exception):
    """A client event the real API answers with an ``error`` event (and otherwise ignores)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _is_beta_shaped(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    kind = str(event.get("type", ""))
    if kind.startswith(("response.audio", "response.text", "transcription_session.")):
        return True
    body = event.get("session") if kind == "session.update" else event.get("response")
    keys = _BETA_SESSION_KEYS if kind == "session.update" else _BETA_RESPONSE_KEYS
    return (
        kind in ("session.update", "response.create") and isinstance(body, dict) and bool(keys & body.keys())
    )


@dataclass(eq=False)
class SimSession:
    """Everything one client connection did and was sent, plus its conversation state."""

    index: int
    model: str
    headers: dict[str, str]
    session: dict[str, Any] = field(default_factory=dict)
    client_events: list[dict] = field(default_factory=list)  # accepted only
    refused_events: list[tuple[dict, dict]] = field(default_factory=list)  # (event, the error sent)
    server_events: list[dict] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    server_violations: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    input_audio: bytearray = field(default_factory=bytearray)
    # (monotonic time, cumulative bytes) of every append received; (monotonic time, bytes) of every
    # audio delta sent
    input_times: list[tuple[float, int]] = field(default_factory=list)
    output_times: list[tuple[float, int]] = field(default_factory=list)
    output_audio: dict[str, bytearray] = field(default_factory=dict)
    output_order: list[str] = field(default_factory=list)
    tool_outputs: list[dict] = field(default_factory=list)
    truncations: list[tuple[str, int, float]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # items the client deleted, in order
    text_inputs: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    def __post_init__(self) -> None:
        self.session = {
            "type": "realtime",
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": "You are a helpful assistant.",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "audio": {
                "input": {"format": dict(PCM24), "transcription": None, "noise_reduction": None,
                          "turn_detection": dict(_DEFAULT_VAD)},
                "output": {"format": dict(PCM24), "voice": "alloy", "speed": 1.0},
            },
        }  # fmt: skip
        self._sim: RealtimeSimulator | None = None
        self._script: Scenario | None = None  # the script of the tagged call this session serves
        self._ws: ServerConnection | None = None
        self.opened_at = time.monotonic()  # when the socket opened
        self.configured = False  # a session.updated was sent
        self._counter = 0
        self._tasks: set[asyncio.Task] = set()
        self._vad = ServerVad(threshold=VOICED_ENERGY)
        self._pending = bytearray()  # appended bytes not yet a whole VAD frame
        self.audio_ms = 0  # audio time: ms of input processed so far
        self._buffer_start_ms = 0  # start of the uncommitted input buffer
        self._speech_item: str | None = None
        self.last_item_id: str | None = None
        self.turn_index = 0
        self.replaying = False  # assistant items created before any audio: a restored history
        # (turn, step): the response of a turn's plan to give next; set by a caller utterance
        # (step 0) or a failed response (the same step again).
        self.pending: tuple[Turn, int] | None = None
        self.tool_wait: dict | None = None  # {"turn", "next", "call_ids", "outputs"}
        self.failures: dict[int, int] = {}  # id(turn) -> failed responses so far
        self.items: list[str] = []  # ids of the conversation's items, in order
        self.active: ResponseRun | None = None
        self.respond_after_active = False
        self.audio_produced = False
        self.committed_ms = 0
        self.idle_deadline_ms: int | None = None
        self.item_bpm: dict[str, int] = {}  # bytes per ms of each output item's audio format
        self.usage_state = {"text_in": 0, "audio_in": 0, "last_input": 0}
        self.conversation_id = self.new_id("conv")

    # ---- plumbing -------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        """Deterministic, unique ids shaped like the real ones (``item_...``, ``resp_...``)."""
        self._counter += 1
        return f"{prefix}_S{self.index:04d}N{self._counter:012d}"

    @property
    def scenario(self) -> Scenario:
        return session_script(self._sim.scenario if self._sim else None, self._script)

    @property
    def turn_detection(self) -> dict | None:
        return self.session["audio"]["input"].get("turn_detection")

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        """Run ``coro`` as a task owned by this session (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine) -> None:
        try:
            await coro
        except ConnectionClosed:
            pass  # the client went away; nothing left to say
        except Exception as exc:  # a simulator bug: keep it visible to tests, keep serving
            log.exception("realtime sim session %d task failed", self.index)
            self.internal_error(repr(exc))

    # ---- records --------------------------------------------------------------------------
    def violation(self, message: str) -> None:
        """The client did something the real API refuses."""
        self.violations.append(message)
        if self._sim is not None:
            self._sim.record("violation", message, self)

    def internal_error(self, message: str) -> None:
        """The simulator itself failed."""
        self.internal_errors.append(message)
        if self._sim is not None:
            self._sim.record("internal_error", message, self)

    def add_item(self, item_id: str) -> str | None:
        """Append an item to the conversation; returns the id of the one before it."""
        previous, self.last_item_id = self.last_item_id, item_id
        self.items.append(item_id)
        return previous

    async def emit(self, event: dict) -> None:
        """Send one server event (validated first when the simulator validates)."""
        event = {"event_id": self.new_id("event"), **event}
        if self._sim is None or self._sim.validate:
            try:
                check_server_event(event)
            except OracleError as exc:
                self.server_violations.append(str(exc))
                if self._sim:
                    self._sim.record("server_violation", str(exc), self)
        self.server_events.append(event)
        assert self._ws is not None
        await self._ws.send(orjson.dumps(event).decode())

    async def error(
        self, code: str, message: str, client_event: dict | None = None, param: str | None = None
    ) -> None:
        """Answer like the real API: an ``error`` event, the conversation carries on."""
        event_id = client_event.get("event_id") if isinstance(client_event, dict) else None
        await self.emit({"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message,
            "param": param, "event_id": event_id if isinstance(event_id, str) else None,
        }})  # fmt: skip

    async def shutdown(self) -> None:
        """Cancel every task this session started and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- connection -----------------------------------------------------------------------
    async def serve(self, sim: RealtimeSimulator, ws: ServerConnection) -> None:
        """Talk to one client until it or the simulator closes the socket."""
        self._sim, self._ws = sim, ws
        await self.emit({"type": "session.created", "session": copy.deepcopy(self.session)})
        if sim.expire_after_s is not None:
            self.spawn(self._expire(sim.expire_after_s))
        async for message in ws:
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                self.violation(f"not JSON: {message[:80]!r}")
                await self.error("invalid_json", "The event is not valid JSON.")
                continue
            if _is_beta_shaped(event):
                self.violation(f"beta-shaped {event.get('type')!r} event (closed 4000)")
                self.refused_events.append((event, {"code": "beta_api_shape_disabled"}))
                await ws.close(4000, "beta_api_shape_disabled")
                return
            try:
                if sim.validate:
                    try:
                        check_client_event(event)
                    except OracleError as exc:
                        raise Refusal(exc.code, str(exc), exc.param) from exc
                try:
                    await self._dispatch(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:  # only unvalidated input
                    raise Refusal("invalid_value", f"Could not process event: {exc!r}") from exc
            except Refusal as refusal:
                await self._refuse(event, refusal)

    async def _refuse(self, event: Any, refusal: Refusal) -> None:
        kind = event.get("type") if isinstance(event, dict) else None
        error = {"code": refusal.code, "message": refusal.message, "param": refusal.param}
        self.refused_events.append((event, error))
        if refusal.code not in RACES:
            self.violation(f"{kind!r} refused ({refusal.code}): {refusal.message}")
        await self.error(refusal.code, refusal.message, event, refusal.param)

    async def _expire(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self.expire()

    async def expire(self) -> None:
        """End the session now as the real API does at 60 minutes: ``session_expired``, close 1001."""
        await self.error("session_expired", "Your session hit the maximum duration of 60 minutes.")
        assert self._ws is not None
        await self._ws.close(1001, "session_expired")

    # ---- client events --------------------------------------------------------------------
    async def _dispatch(self, event: dict) -> None:
        """Check the event (raising :class:`Refusal`), record it as accepted, then act on it."""
        kind = event.get("type")
        accept = self.client_events.append
        if kind == "input_audio_buffer.append":
            audio = base64.b64decode(event["audio"])
            accept(event)
            await self._append(audio)
        elif kind == "session.update":
            await self._update_session(event)
        elif kind == "response.create":
            if self.active is not None:
                raise Refusal(
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {self.active.id}. "
                    "Wait until the response is finished before creating a new one.",
                )
            accept(event)
            start_response(self, client=True, request=event.get("response") or {})
        elif kind == "response.cancel":
            if self.active is None or self.active.cancel_reason:
                raise Refusal("response_cancel_not_active", "Cancellation failed: no active response found")
            accept(event)
            self.active.cancel("client_cancelled")
        elif kind == "conversation.item.create":
            await self._create_item(event)
        elif kind == "conversation.item.truncate":
            await self._truncate(event)
        elif kind == "conversation.item.delete":
            await self._delete(event)
        elif kind == "input_audio_buffer.commit":
            if self.audio_ms - self._buffer_start_ms < 100:
                raise Refusal(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio.",
                )
            accept(event)
            await self._commit(self._speech_item or self.new_id("item"), auto=False)
        elif kind == "input_audio_buffer.clear":
            accept(event)
            self._vad.reset()
            self._buffer_start_ms, self._speech_item = self.audio_ms, None
            await self.emit({"type": "input_audio_buffer.cleared"})
        else:  # valid GA events this phone simulator does not model (item.retrieve, ...)
            raise Refusal("unsupported_event", f"The simulator does not support {kind!r}.")

    async def _update_session(self, event: dict) -> None:
        update = event["session"]
        if update.get("type", "realtime") != "realtime":
            raise Refusal("invalid_value", "Only realtime sessions are simulated.", "session.type")
        new = copy.deepcopy(self.session)
        for key, value in update.items():
            if key != "audio":
                new[key] = value
                continue
            for direction in ("input", "output"):
                if direction not in value:
                    continue
                merged = {**new["audio"][direction], **value[direction]}
                # Trap 5: an audio block without a format resets it to 24 kHz PCM.
                fmt = value[direction].get("format") or PCM24
                merged["format"] = {**PCM24, **fmt} if fmt.get("type") == "audio/pcm" else dict(fmt)
                if direction == "input" and value[direction].get("turn_detection"):
                    merged["turn_detection"] = self._complete_vad(value[direction]["turn_detection"])
                new["audio"][direction] = merged
        old_voice, new_voice = (
            self.session["audio"]["output"].get("voice"),
            new["audio"]["output"].get("voice"),
        )
        if self.audio_produced and new_voice != old_voice:
            raise Refusal(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
            )
        self.client_events.append(event)
        self.session = new
        delay = self._sim.connect_delay_s - (time.monotonic() - self.opened_at) if self._sim is not None else 0
        if delay > 0 and not self.configured:  # a real socket's set-up and first update
            await asyncio.sleep(delay)
        self.configured = True
        await self.emit({"type": "session.updated", "session": copy.deepcopy(new)})

    @staticmethod
    def _complete_vad(td: dict) -> dict:
        if td.get("type") == "semantic_vad":
            return {"create_response": True, "interrupt_response": True, "eagerness": "auto", **td}
        return {**_DEFAULT_VAD, **td}

    async def _create_item(self, event: dict) -> None:
        item = dict(event["item"])
        if item.get("id") in self.items:
            raise Refusal("invalid_value", f"Item with id '{item['id']}' already exists.", "item.id")
        self.client_events.append(event)
        item.setdefault("id", self.new_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if item["type"] == "function_call_output":
            self.tool_outputs.append({"call_id": item["call_id"], "output": item["output"]})
            if self.tool_wait and item["call_id"] in self.tool_wait["call_ids"]:
                self.tool_wait["outputs"].add(item["call_id"])
        elif item["type"] == "message" and item.get("role") == "user":
            texts = [c.get("text", "") for c in item["content"] if c.get("type") == "input_text"]
            self.text_inputs += texts
            self.usage_state["text_in"] += sum(len(t) // 4 + 1 for t in texts)
            if self.replaying and not self.input_audio:
                # History replayed into a new session (a client restoring a lost socket): the
                # script continues where the conversation was instead of starting over.
                self.turn_index += 1
        elif item["type"] == "message" and item.get("role") == "assistant" and not self.input_audio:
            self.replaying = True
        previous = self.add_item(item["id"])
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def _truncate(self, event: dict) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        if item_id not in self.output_audio or item_id not in self.items:
            raise Refusal("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        generated_ms = len(self.output_audio[item_id]) // self.item_bpm[item_id]
        if end_ms > generated_ms:
            raise Refusal(
                "invalid_value",
                f"Invalid 'audio_end_ms': {end_ms}ms is beyond the {generated_ms}ms of audio "
                f"generated for item {item_id}.",
                "audio_end_ms",
            )
        if end_ms <= 0:
            # Trap 8: a truncate to nothing is refused; delete the item (or cancel) instead.
            raise Refusal(
                "invalid_value", f"Invalid 'audio_end_ms': {end_ms}. Expected a value greater than 0.", "audio_end_ms"
            )
        self.client_events.append(event)
        self.truncations.append((item_id, end_ms, asyncio.get_running_loop().time()))
        await self.emit({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": event["content_index"], "audio_end_ms": end_ms})  # fmt: skip

    async def _delete(self, event: dict) -> None:
        item_id = event["item_id"]
        if item_id not in self.items:
            raise Refusal("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        self.client_events.append(event)
        self.items.remove(item_id)
        self.deleted.append(item_id)
        if self.last_item_id == item_id:
            self.last_item_id = self.items[-1] if self.items else None
        await self.emit({"type": "conversation.item.deleted", "item_id": item_id})

    # ---- input audio and VAD --------------------------------------------------------------
    async def _append(self, data: bytes) -> None:
        if self._script is None and self._sim and self._sim.scripts:
            # A tagged call (dial(tag=)) follows the script held for its tag, from its first silence.
            self._script = tagged_script(self._sim.scripts, self.input_audio, data)
        self.input_audio += data
        self.input_times.append((time.monotonic(), len(self.input_audio)))
        self._pending += data
        fmt = self.session["audio"]["input"]["format"].get("type")
        bpm = bytes_per_ms(fmt)
        frame = 20 * bpm
        td = self.turn_detection
        while len(self._pending) >= frame:
            chunk = bytes(self._pending[:frame])
            del self._pending[:frame]
            start_ms = self.audio_ms
            self.audio_ms += 20
            if not td:
                continue
            self._vad.silence_duration_ms = td.get("silence_duration_ms") or _SEMANTIC_SILENCE_MS.get(
                td.get("eagerness", "auto"), 800
            )
            self._vad.prefix_padding_ms = td.get("prefix_padding_ms", 300)
            # 24 kHz PCM (a session whose format was reset) is int16; everything else is G.711.
            level = sum(map(abs, array("h", chunk))) / (frame // 2) if bpm == 48 else energy(chunk)
            change = self._vad.process(level, start_ms, 20, self._buffer_start_ms)
            if change == "started":
                await self._speech_started(td)
            elif change == "stopped":
                await self.emit({"type": "input_audio_buffer.speech_stopped",
                                 "audio_end_ms": self._vad.stop_ms, "item_id": self._speech_item})  # fmt: skip
                await self._commit(
                    self._speech_item or self.new_id("item"), auto=bool(td.get("create_response"))
                )
            elif (
                not self._vad.in_speech
                and self.idle_deadline_ms is not None
                and self.audio_ms >= self.idle_deadline_ms
                and td.get("type") == "server_vad"
            ):
                await self._idle_timeout(td)

    async def _speech_started(self, td: dict) -> None:
        self._speech_item = self.new_id("item")
        self.idle_deadline_ms = None
        await self.emit({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": self._vad.start_ms, "item_id": self._speech_item})  # fmt: skip
        if self.active is not None and td.get("interrupt_response", True):
            self.active.cancel("turn_detected")

    async def _idle_timeout(self, td: dict) -> None:
        start, self.idle_deadline_ms = self.idle_deadline_ms - td["idle_timeout_ms"], None
        await self.emit({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": max(0, start),
                         "audio_end_ms": self.audio_ms, "item_id": self.new_id("item")})  # fmt: skip
        if td.get("create_response", True) and self.active is None:
            start_response(self, client=False)

    def next_turn(self) -> Turn:
        """Consume the next scripted turn (a fallback turn once the script is exhausted)."""
        turn = self.scenario.turn(self.turn_index)
        self.turn_index += 1
        return turn

    async def _commit(self, item_id: str, *, auto: bool) -> None:
        self._vad.reset()
        audio_ms = self.audio_ms - self._buffer_start_ms
        self._buffer_start_ms, self._speech_item = self.audio_ms, None
        self.committed_ms += audio_ms
        self.usage_state["audio_in"] += audio_ms // 100
        turn = self.next_turn()
        self.pending = (turn, 0)
        transcript = turn.caller if turn.caller is not None else "(unscripted)"
        previous = self.add_item(item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}  # fmt: skip
        await self.emit(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous}
        )
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        if self.session["audio"]["input"].get("transcription"):
            self.spawn(self._transcribe(item_id, transcript, audio_ms, fails=turn.transcription_fails))
        if auto:
            if self.active is None:
                start_response(self, client=False)
            else:  # the interrupted response is still winding down: answer right after it
                self.respond_after_active = True

    async def _transcribe(self, item_id: str, transcript: str, audio_ms: int, *, fails: bool) -> None:
        # The transcription model runs beside the conversation: it lands 50-150 ms later.
        await asyncio.sleep((50 + (self._counter * 37) % 100) / 1000)
        if fails:
            # The caller's words have no text (trap 9); the shape of the API reference's example.
            await self.emit({
                "type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible",
                                              "message": "The audio could not be transcribed.", "param": None},
            })  # fmt: skip
            return
        words = transcript.split(" ")
        third = max(1, len(words) // 3)
        for i in range(0, len(words), third):
            piece = " ".join(words[i : i + third]) + (" " if i + third < len(words) else "")
            await self.emit({"type": "conversation.item.input_audio_transcription.delta",
                             "item_id": item_id, "content_index": 0, "delta": piece})  # fmt: skip
        audio_tokens, text_tokens = max(1, audio_ms // 100), len(transcript) // 4 + 1
        await self.emit({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id, "content_index": 0, "transcript": transcript,
            "usage": {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": text_tokens,
                      "total_tokens": audio_tokens + text_tokens,
                      "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens}},
        })  # fmt: skip
