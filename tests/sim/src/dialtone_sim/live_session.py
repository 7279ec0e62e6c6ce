"""One simulated GPT-Live session: client events in, server events out.

What the simulated model does, as GPT-Live does it:

- Nothing but ``session.start`` may come first, and nothing at all until ``session.started`` (sent
  after the simulator's ``start_delay_s``): anything earlier is refused, a violation.
- Output audio streams continuously in ``audio_chunk_ms`` deltas paced in real time (x ``speed``):
  speech when the model speaks, silence otherwise. Its transcript comes as timed deltas, with no
  "done" event, as does the caller's.
- The caller's audio goes through voice activity detection (:class:`~dialtone_sim.vad.ServerVad`).
  Caller speech consumes the next scripted :class:`~dialtone_sim.scenario.Turn`: its words come
  back as input transcript deltas (a word per 200 ms of speech, any left when the caller stops). If
  the model is speaking, it stops at once (full duplex: it yields to the caller by itself).
- When the caller stops, the model answers the turn: the ``preamble`` if any, then, for a turn
  with ``tools``, a Responses delegation (``session.delegation.created``, then ``response.event``
  envelopes: a backend response with the function calls, one call per response or all at once with
  ``parallel_tools``); it waits for every call's ``function_call_output`` and a ``response.create``
  before the next backend response, and the last one's message is what the model says (``agent``).
- Commentary saying ``exactly: "..."`` is spoken as is (greeting, filler, goodbye); other
  commentary (a key pressed) is answered like a caller turn.
- ``session.usage.updated`` reports the cumulative seconds every ``usage_every_s``;
  ``session.close`` is answered with ``session.closed`` (reason, final usage), then the socket closes.
- A session started with ``input`` (history) continues the script after the user messages given.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import math
import re
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import SILENCE_BYTE, energy
from .oracle import OracleError, check_live_client_event, check_live_server_event
from .scenario import Scenario, ToolCall, Turn, session_script, tagged_script
from .speech import VOICED_ENERGY, synthesize
from .vad import ServerVad

if TYPE_CHECKING:
    from .live import LiveSimulator

__all__ = ["LiveSession", "Refusal"]

log = logging.getLogger(__name__)

_SAY_EXACTLY = re.compile(r'exactly:\s*"([^"]+)"', re.IGNORECASE)
WORD_EVERY_MS = 200  # input transcript fragments land on 200 ms frame boundaries


class Refusal(Exception):
    """A client event GPT-Live answers with an ``error`` event (and otherwise ignores)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class _Speech:
    item: str
    text: str
    audio: bytes
    offset: int = 0
    spoken_words: int = 0
    cut: bool = False


@dataclass(eq=False)
class LiveSession:
    """Everything one client connection did and was sent, plus its conversation state."""

    index: int
    headers: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)  # the session.start session, as updated
    started: bool = False
    client_events: list[dict] = field(default_factory=list)  # accepted only (audio appends counted apart)
    appends: int = 0
    refused_events: list[tuple[dict, dict]] = field(default_factory=list)
    server_events: list[dict] = field(default_factory=list)  # audio deltas counted apart
    audio_deltas: int = 0
    violations: list[str] = field(default_factory=list)
    server_violations: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    input_audio: bytearray = field(default_factory=bytearray)
    # (monotonic time, cumulative bytes) of every append received; (monotonic time, bytes) of every
    # speech delta sent (idle silence is not listed): the bench's latency figures
    input_times: list[tuple[float, int]] = field(default_factory=list)
    output_times: list[tuple[float, int]] = field(default_factory=list)
    output_audio: dict[str, bytearray] = field(default_factory=dict)  # speech only, by utterance
    output_order: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # utterances the caller cut off
    said: list[str] = field(default_factory=list)  # what the model said (cut where it stopped)
    heard_caller: list[str] = field(default_factory=list)  # the caller's transcripts
    commentary: list[str] = field(default_factory=list)
    tool_outputs: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # the session.start input
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    opened_at: float = field(default_factory=time.monotonic)  # when the socket opened
    close_code: int | None = None
    close_reason: str | None = None

    def __post_init__(self) -> None:
        self._sim: LiveSimulator | None = None
        self._script: Scenario | None = None  # the script of the tagged call this session serves
        self._ws: ServerConnection | None = None
        self._counter = 0
        self._tasks: set[asyncio.Task] = set()
        self._vad = ServerVad(threshold=VOICED_ENERGY)
        self._pending = bytearray()
        self.audio_ms = 0  # caller audio processed
        self._t0 = 0.0  # loop time of session.started
        self.turn_index = 0
        self._queue: deque[_Speech] = deque()
        self._current: _Speech | None = None
        self._utterance: dict[str, Any] | None = None  # the caller speaking: turn, words, sent
        self.tool_wait: dict[str, Any] | None = None  # {"turn", "step", "call_ids", "outputs", "delegation"}
        self.session_id = self.new_id("sess")

    # ---- plumbing -------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_L{self.index:04d}N{self._counter:010d}"

    @property
    def scenario(self) -> Scenario:
        return session_script(self._sim.scenario if self._sim else None, self._script)

    def now_ms(self) -> int:
        return int((asyncio.get_running_loop().time() - self._t0) * 1000) if self._t0 else 0

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine) -> None:
        try:
            await coro
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("live sim session %d task failed", self.index)
            self.internal_error(repr(exc))

    def violation(self, message: str) -> None:
        self.violations.append(message)
        if self._sim is not None:
            self._sim.record("violation", message, self)

    def internal_error(self, message: str) -> None:
        self.internal_errors.append(message)
        if self._sim is not None:
            self._sim.record("internal_error", message, self)

    async def emit(self, event: dict) -> None:
        """Send one server event (validated first when the simulator validates)."""
        if event["type"] != "session.output_audio.delta":  # (audio deltas carry no event_id)
            event = {"event_id": self.new_id("event"), **event}
        if self._sim is None or self._sim.validate:
            try:
                check_live_server_event(event)
            except OracleError as exc:
                self.server_violations.append(str(exc))
                if self._sim:
                    self._sim.record("server_violation", str(exc), self)
        if event["type"] == "session.output_audio.delta":
            self.audio_deltas += 1
        else:
            self.server_events.append(event)
        assert self._ws is not None
        await self._ws.send(orjson.dumps(event).decode())

    async def fail(self, code: str, message: str, client_event: dict | None = None, param: str | None = None) -> None:
        """An ``error`` event, as GPT-Live sends one (the session carries on)."""
        event_id = client_event.get("event_id") if isinstance(client_event, dict) else None
        error: dict[str, Any] = {"code": code, "message": message, "type": "invalid_request_error"}
        if isinstance(event_id, str):
            error["client_event_id"] = event_id
        if param:
            error["param"] = param
        await self.emit({"type": "error", "error": error})

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _resource(self) -> dict[str, Any]:
        session = copy.deepcopy(self.config)
        session.pop("input", None)
        return {"id": self.session_id, "expires_at": int(time.time()) + 3600, "status": "active", **session}

    def _seconds(self) -> float:
        return round(self.now_ms() / 1000, 3)

    # ---- connection -----------------------------------------------------------------------
    async def serve(self, sim: LiveSimulator, ws: ServerConnection) -> None:
        self._sim, self._ws = sim, ws
        async for message in ws:
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                self.violation(f"not JSON: {message[:80]!r}")
                await self.fail("invalid_json", "The event is not valid JSON.")
                continue
            try:
                if sim.validate:
                    try:
                        check_live_client_event(event)
                    except OracleError as exc:
                        raise Refusal(exc.code, str(exc), exc.param) from exc
                try:
                    await self._dispatch(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise Refusal("invalid_value", f"Could not process event: {exc!r}") from exc
            except Refusal as refusal:
                kind = event.get("type") if isinstance(event, dict) else None
                self.refused_events.append((event, {"code": refusal.code, "message": refusal.message}))
                self.violation(f"{kind!r} refused ({refusal.code}): {refusal.message}")
                await self.fail(refusal.code, refusal.message, event, refusal.param)
            if self.close_reason is not None:
                await ws.close(1000, self.close_reason)
                return

    # ---- client events --------------------------------------------------------------------
    async def _dispatch(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "session.start":
            if self.config:
                raise Refusal("session_already_started", "session.start was already sent on this connection.")
            await self._start(event)
            return
        if not self.started:
            raise Refusal("session_not_started", f"{kind!r} before session.started: wait for session.started.")
        if kind == "session.input_audio.append":
            self.appends += 1
            await self._append(base64.b64decode(event["audio"]))
            return
        self.client_events.append(event)
        if kind == "session.commentary.append":
            await self._commentary(event)
        elif kind == "response.item.create":
            item = event["item"]
            if item.get("type") != "function_call_output":
                return
            wait = self.tool_wait
            if wait is None or item["call_id"] not in wait["call_ids"]:
                self.client_events.pop()
                raise Refusal("invalid_value", f"No function call {item['call_id']!r} awaits an output.", "item.call_id")
            self.tool_outputs.append({"call_id": item["call_id"], "output": item["output"]})
            wait["outputs"].add(item["call_id"])
        elif kind == "response.create":
            wait = self.tool_wait
            if wait is not None and wait["outputs"] < wait["call_ids"]:
                self.client_events.pop()
                raise Refusal("missing_tool_output", "The delegated response still waits for function call outputs.")
            if wait is not None:
                self.tool_wait = None
                self.spawn(self._delegate(wait["turn"], wait["step"] + 1, wait["delegation"]))
        elif kind == "session.update":
            delegation = event["session"].get("delegation")
            if delegation:
                current = self.config.get("delegation") or {}
                if delegation.get("type") != current.get("type"):
                    self.client_events.pop()
                    raise Refusal("invalid_value", "The delegation type cannot change.", "session.delegation.type")
                merged = {**current, **{k: v for k, v in delegation.items() if k != "responses"}}
                merged["responses"] = {**current.get("responses", {}), **(delegation.get("responses") or {})}
                self.config["delegation"] = merged
            await self.emit({"type": "session.updated", "session": self._resource()})
        elif kind in ("session.instructions.append", "session.thinking.append"):
            at = self.now_ms()
            acked = "session.instructions.appended" if kind.startswith("session.instructions") else "session.thinking.appended"
            await self.emit({"type": acked, "start_ms": at, "end_ms": at})
        elif kind == "session.close":
            await self._close("close_requested")
        else:
            self.client_events.pop()
            raise Refusal("unsupported_event", f"The simulator does not support {kind!r}.")

    async def _start(self, event: dict) -> None:
        self.config = copy.deepcopy(event["session"])
        self.client_events.append(event)
        self.history = list(self.config.get("input") or [])
        # History given at start (a client restoring a lost session): the script goes on from there.
        self.turn_index = sum(1 for item in self.history if item.get("role") == "user")
        sim = self._sim
        assert sim is not None
        if sim.refuse_starts > 0:
            sim.refuse_starts -= 1
            await self.fail("session_start_failed", "The Live session could not be started.", event)
            self.close_reason = "session_start_failed"
            return
        self.spawn(self._started(sim))

    async def _started(self, sim: LiveSimulator) -> None:
        await asyncio.sleep(sim.start_delay_s)
        self._t0 = asyncio.get_running_loop().time()
        self.started = True  # before the event goes out: a client may answer it while the send yields
        await self.emit({"type": "session.started", "session": self._resource()})
        self.spawn(self._output())
        self.spawn(self._usage(sim.usage_every_s))
        if sim.expire_after_s is not None:
            self.spawn(self._expire(sim.expire_after_s))

    async def _close(self, reason: str) -> None:
        self.started = False
        await self.emit({"type": "session.closed", "reason": reason, "session": self._resource(),
                         "usage": {"seconds": self._seconds()}})  # fmt: skip
        self.close_reason = reason

    async def _expire(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self.expire()

    async def expire(self) -> None:
        """End the session as GPT-Live's duration limit does: ``session.closed`` (``expired``)."""
        await self._close("expired")
        assert self._ws is not None
        await self._ws.close(1000, "expired")

    async def _usage(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.emit({"type": "session.usage.updated", "usage": {"seconds": self._seconds()}})

    async def _commentary(self, event: dict) -> None:
        content = event["content"]
        self.commentary.append(content)
        at = self.now_ms()
        ack: dict[str, Any] = {"type": "session.commentary.appended", "start_ms": at, "end_ms": at}
        if isinstance(event.get("event_id"), str):
            ack["client_event_id"] = event["event_id"]
        await self.emit(ack)
        said = _SAY_EXACTLY.search(content)
        if said:
            self.say(said.group(1))
        else:  # context to act on (a key pressed): the model answers it as a turn
            self.spawn(self._answer(self.next_turn()))

    # ---- the caller ---------------------------------------------------------------------------
    def next_turn(self) -> Turn:
        turn = self.scenario.turn(self.turn_index)
        self.turn_index += 1
        return turn

    async def _append(self, data: bytes) -> None:
        if self._script is None and self._sim and self._sim.scripts:
            # A tagged call (dial(tag=)) follows the script held for its tag, from its first silence.
            self._script = tagged_script(self._sim.scripts, self.input_audio, data)
        self.input_audio += data
        self.input_times.append((time.monotonic(), len(self.input_audio)))
        self._pending += data
        while len(self._pending) >= 160:
            chunk = bytes(self._pending[:160])
            del self._pending[:160]
            start_ms = self.audio_ms
            self.audio_ms += 20
            change = self._vad.process(energy(chunk), start_ms, 20, 0)
            if change == "started":
                self._caller_started()
            elif change == "stopped":
                await self._caller_stopped()
            elif self._vad.in_speech and self._utterance is not None:
                u = self._utterance
                if (self.audio_ms - u["start"]) // WORD_EVERY_MS > u["sent"] and u["sent"] < len(u["words"]):
                    await self._caller_words(u["sent"] + 1)

    def _caller_started(self) -> None:
        if self._current is not None or self._queue:
            self.stop_speaking()  # full duplex: the model yields to the caller by itself
        turn = self.next_turn()
        words = (turn.caller or "(unscripted)").split(" ")
        self._utterance = {"turn": turn, "words": words, "sent": 0, "start": self._vad.start_ms, "from": self._vad.start_ms}

    async def _caller_words(self, upto: int) -> None:
        u = self._utterance
        assert u is not None
        piece = " ".join(u["words"][u["sent"] : upto])
        if not piece:
            return
        start, end = u["from"], self.audio_ms
        await self.emit({"type": "session.input_transcript.delta", "delta": (" " if u["sent"] else "") + piece,
                         "start_ms": start, "end_ms": end})  # fmt: skip
        u["sent"], u["from"] = upto, end

    async def _caller_stopped(self) -> None:
        u, self._utterance = self._utterance, None
        if u is None:
            return
        self._utterance = u
        await self._caller_words(len(u["words"]))
        self._utterance = None
        self.heard_caller.append(" ".join(u["words"]))
        self.spawn(self._answer(u["turn"]))

    # ---- the model ----------------------------------------------------------------------------
    async def _answer(self, turn: Turn) -> None:
        assert self._sim is not None
        await asyncio.sleep(self._sim.think_s)
        if turn.preamble:
            self.say(turn.preamble)
        if turn.tools:
            await self._delegate(turn, 0, self.new_id("dlg"))
        else:
            self.say(turn.agent)

    def _steps(self, turn: Turn) -> list[list[ToolCall]]:
        return [list(turn.tools)] if turn.parallel_tools else [[t] for t in turn.tools]

    async def _delegate(self, turn: Turn, step: int, delegation: str) -> None:
        """One backend response of a delegation: the function calls of ``step``, or the answer."""
        assert self._sim is not None
        steps = self._steps(turn)
        response_id = self.new_id("resp")
        model = (self.config.get("delegation") or {}).get("responses", {}).get("model", "gpt-5.4-mini")
        if step == 0:
            await self.emit({"type": "session.delegation.created", "offset_ms": self.now_ms(), "delegation": {
                "id": delegation, "target": "responses", "type": "delegation", "response_id": response_id}})  # fmt: skip
        else:
            await asyncio.sleep(self._sim.think_s)
        seq = 0

        async def backend(inner: dict) -> None:
            nonlocal seq
            seq += 1
            await self.emit({"type": "response.event", "delegation_id": delegation,
                             "event": {**inner, "sequence_number": seq}})  # fmt: skip

        shell = {"id": response_id, "object": "response", "model": model, "output": []}
        await backend({"type": "response.created", "response": {**shell, "status": "in_progress"}})
        if step < len(steps):
            calls = steps[step]
            ids = set()
            for index, call in enumerate(calls):
                call_id = self.new_id("call")
                ids.add(call_id)
                item = {"type": "function_call", "id": self.new_id("fc"), "call_id": call_id, "name": call.name,
                        "arguments": orjson.dumps(call.arguments).decode(), "status": "completed"}  # fmt: skip
                await backend({"type": "response.output_item.done", "output_index": index, "item": item})
            self.tool_wait = {"turn": turn, "step": step, "call_ids": ids, "outputs": set(), "delegation": delegation}
            text = ""
        else:
            text = turn.agent
            item = {"type": "message", "id": self.new_id("msg"), "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
            await backend({"type": "response.output_item.done", "output_index": 0, "item": item})
        usage = {"input_tokens": 400 + 50 * step, "input_tokens_details": {"cached_tokens": 128 if step else 0},
                 "output_tokens": 20 + len(text) // 4, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 420 + 50 * step + len(text) // 4}  # fmt: skip
        await backend({"type": "response.completed", "response": {**shell, "status": "completed", "usage": usage}})
        if text:
            self.say(text)

    def say(self, text: str) -> None:
        """Queue an utterance (the output loop speaks it after what is being said)."""
        item = self.new_id("utt")
        audio = synthesize(text, self.index * 1000 + len(self.output_order))
        self.output_audio[item] = bytearray()
        self.output_order.append(item)
        self._queue.append(_Speech(item, text, audio))

    def stop_speaking(self) -> None:
        """Stop at once (the caller cut in): what is being said is cut, what was queued dropped."""
        if self._current is not None:
            self._current.cut = True
        for speech in self._queue:
            self.interrupted.append(speech.item)
        self._queue.clear()

    async def _output(self) -> None:
        """The output stream: paced chunks of speech, or silence when there is none."""
        sim = self._sim
        assert sim is not None
        chunk = sim.audio_chunk_ms * 8
        step_s = sim.audio_chunk_ms / 1000 / max(sim.speed, 0.01)
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:
            if self._current is None and self._queue:
                self._current = self._queue.popleft()
            speech = self._current
            if speech is not None and speech.cut:
                self._finish(speech, cut=True)
                speech = None
            if speech is not None:
                piece = speech.audio[speech.offset : speech.offset + chunk]
                speech.offset += len(piece)
                self.output_audio[speech.item] += piece
                at = self.now_ms()
                self.output_times.append((time.monotonic(), len(piece)))
                await self.emit({"type": "session.output_audio.delta", "delta": base64.b64encode(piece).decode()})
                words = speech.text.split(" ")
                said = math.ceil(len(words) * speech.offset / len(speech.audio))
                if said > speech.spoken_words:
                    delta = (" " if speech.spoken_words else "") + " ".join(words[speech.spoken_words : said])
                    speech.spoken_words = said
                    await self.emit({"type": "session.output_transcript.delta", "delta": delta, "start_ms": at,
                                     "end_ms": at + sim.audio_chunk_ms})  # fmt: skip
                if speech.offset >= len(speech.audio):
                    self._finish(speech, cut=False)
            elif sim.idle_silence:
                await self.emit({"type": "session.output_audio.delta",
                                 "delta": base64.b64encode(bytes([SILENCE_BYTE]) * chunk).decode()})  # fmt: skip
            n += 1
            await asyncio.sleep(max(0.0, start + n * step_s - loop.time()))

    def _finish(self, speech: _Speech, *, cut: bool) -> None:
        self._current = None
        words = speech.text.split(" ")
        self.said.append(" ".join(words[: speech.spoken_words]) if cut else speech.text)
        if cut:
            self.interrupted.append(speech.item)
