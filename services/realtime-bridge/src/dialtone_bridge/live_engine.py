"""The OpenAI GPT-Live engine: one primary WebSocket per call (``OPENAI_LIVE_URL``), its JSON parsed
here into the engine-neutral events of ``engine.py`` and the bridge's commands built here into
client events. Nothing else in the bridge sees GPT-Live's protocol.

GPT-Live is full duplex: the model listens while it speaks and decides itself when to answer and
when to stop. Its events say less than Realtime's, so this edge derives what the conversation needs:

- **Session.** ``session.start`` is the first message (model, instructions, ``audio/pcmu`` at 8 kHz
  both ways, voice, Responses delegation with the agent's tools); nothing else is sent before
  ``session.started``. Frontend instructions, voice and formats cannot change afterwards.
- **Agent speech.** The model streams audio continuously, silence included. A reply begins with the
  first voiced audio and ends after :data:`REPLY_GAP_S` without any (its trailing silence is never
  played); silence inside a reply is played. Its text is the output transcript's deltas.
- **Caller speech.** There is no speech-started event and no transcript ``done``: the input
  transcript's deltas open a caller turn (:class:`~engine.CallerSpeechStarted`) and a pause in them
  (the agent's ``silence_duration_ms`` plus a margin, at least :data:`CALLER_GAP_S`), or the agent
  starting to reply, closes it
  (:class:`~engine.CallerSpeechStopped`, then the line as :class:`~engine.CallerText`).
- **Interruption.** The model stops by itself; nothing is truncated (``heard``/``forget`` are
  no-ops). When the caller speaks over a reply and the model's voiced output stops, the caller's
  speech starts *then* and the reply ends ``cancelled``, so the conversation clears what Twilio
  still holds and records the line interrupted with what was heard. A caller who talks over a reply
  the model carries on with (a backchannel) interrupts nothing.
- **Tools.** Delegated to a Responses model (the agent's ``backend_model``): its function calls
  arrive inside ``response.event``; each completed call is a :class:`~engine.ToolCallRequested`,
  and the backend response's end a :class:`~engine.ReplyFinished` holding the calls, so the
  conversation runs them and sends the outputs (``response.item.create``), then asks for a reply,
  which continues the delegation (``response.create``).
- **Steered speech** (greeting, filler, goodbye, apology) and DTMF are commentary: speakable
  context the model communicates in its own voice.
- **Usage.** ``session.usage.updated`` (cumulative seconds) becomes increments of session seconds
  (:class:`~engine.UsageUpdated`), priced per second; a backend response's tokens are priced under
  the backend model.
- **Reconnect.** A lost or expired session is started again with the conversation so far as
  ``input`` (at most :data:`HISTORY_MESSAGES` messages and about :data:`HISTORY_TOKENS` tokens).

Client events are built as JSON here and validated against ``openai.types.live.ClientEvent`` by the
tests and the simulator. Server events are read field by field (audio deltas arrive ten or fifty
times a second per call); ``session.started`` is checked for the audio format.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dialtone_bridge import metrics as m
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
    ReplyFinished,
    ReplyItem,
    ReplyStarted,
    ReplyStatus,
    SessionSpec,
    TextSpan,
    ToolCallRequested,
    Usage,
    UsageUpdated,
)
from dialtone_bridge.socket_engine import SocketConnection, open_socket

log = logging.getLogger("dialtone.bridge.live")

AUDIO_FORMAT = {"type": "audio/pcmu", "rate": 8000}
HISTORY_MESSAGES = 128  # GPT-Live's limit on a session's starting input
HISTORY_TOKENS = 8192  # and its default limit on the tokens of that input (estimated here)
REPLY_GAP_S = 0.8  # the model's output without voiced audio this long ends its reply
YIELD_S = 0.2  # talked over, the model's voiced output stopped this long: it yielded to the caller
CALLER_GAP_S = 0.8  # at least this long without caller transcript ends the caller's turn
REPLY_WAIT_S = 15.0  # a reply asked for that has not begun after this is given up
CLOSE_WAIT_S = 1.0  # on close, how long to wait for session.closed (its final usage)
# session.closed reasons as the cause of a lost connection (the session reconnects, or ends the call
# on a safety filter: see ``session.py``).
CLOSE_CAUSES = {
    "close_requested": "closed",
    "expired": "session_expired",
    "content": "content_filter",
    "remote_hangup": "remote_hangup",
    "connection_lost": "connection_lost",
}


def _mulaw_amplitude(code: int) -> int:
    u = ~code & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)) - 0x84
    return magnitude


# mu-law codes quieter than about -48 dBFS: what counts as silence in the model's output.
_QUIET = bytes(c for c in range(256) if _mulaw_amplitude(c) < 128)


def voiced(audio: bytes) -> bool:
    """Whether a chunk of mu-law audio holds anything louder than near-silence."""
    return len(audio.translate(None, _QUIET)) * 50 > len(audio)  # over 2 % of samples


# ---- client events ---------------------------------------------------------------------------


def function_tools(spec: SessionSpec) -> list[dict[str, Any]]:
    return [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in spec.tools
    ]


def backend_config(spec: SessionSpec) -> dict[str, Any]:
    """The Responses backend the agent's tools are delegated to."""
    agent = spec.agent
    backend: dict[str, Any] = {"model": agent.backend_model, "instructions": agent.backend_instructions or agent.instructions}
    tools = function_tools(spec)
    if tools:
        backend["tools"] = tools
        backend["tool_choice"] = "auto"
    return backend


def _estimate_tokens(text: str) -> int:
    return len(text) // 4 + 4


def history_input(history: Sequence[HistoryLine]) -> list[dict[str, Any]]:
    """The conversation so far as a session's ``input``: the newest lines that fit GPT-Live's
    limits (messages and tokens), oldest first."""
    kept: list[dict[str, Any]] = []
    budget = HISTORY_TOKENS
    for line in reversed(history):
        if not line.text.strip() or len(kept) >= HISTORY_MESSAGES:
            continue
        cost = _estimate_tokens(line.text)
        if cost > budget:
            break
        budget -= cost
        if line.role == "caller":
            kept.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": line.text}]})
        else:
            kept.append({"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": line.text}]})  # fmt: skip
    return kept[::-1]


def session_config(spec: SessionSpec, model: str, history: Sequence[HistoryLine] = ()) -> dict[str, Any]:
    session: dict[str, Any] = {
        "model": model,
        "instructions": spec.agent.instructions,
        "audio": {"format": dict(AUDIO_FORMAT), "output": {"voice": spec.voice}},
        "delegation": {"type": "responses", "responses": backend_config(spec)},
    }
    if items := history_input(history):
        session["input"] = items
    return session


def session_start(spec: SessionSpec, model: str, history: Sequence[HistoryLine] = ()) -> str:
    return orjson.dumps({"type": "session.start", "session": session_config(spec, model, history)}).decode()


def session_update(spec: SessionSpec) -> str:
    """A handoff within one session: the backend's instructions and tools (the frontend
    instructions, the voice and the formats cannot change once started)."""
    backend = backend_config(spec)
    if "tools" not in backend:
        backend["tools"] = []
    return orjson.dumps({"type": "session.update",
                         "session": {"delegation": {"type": "responses", "responses": backend}}}).decode()  # fmt: skip


def append(audio: bytes) -> str:
    # The hot path (50 a second per call): build the JSON by hand, base64 needs no escaping.
    return '{"type":"session.input_audio.append","audio":"' + base64.b64encode(audio).decode() + '"}'


def commentary(content: str, event_id: str | None = None) -> str:
    """Speakable context: the model says it (in its own words) when it fits the conversation."""
    event: dict[str, Any] = {"type": "session.commentary.append", "content": content, "delegation_id": None}
    if event_id:
        event["event_id"] = event_id
    return orjson.dumps(event).decode()


def function_output(call_id: str, output: Any) -> str:
    return orjson.dumps({"type": "response.item.create", "item": {
        "type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()}}).decode()  # fmt: skip


def response_create(event_id: str | None = None) -> str:
    event: dict[str, Any] = {"type": "response.create"}
    if event_id:
        event["event_id"] = event_id
    return orjson.dumps(event).decode()


SESSION_CLOSE = '{"type":"session.close"}'
# A session started from history (a handoff from another engine) asked to reply with nothing to
# continue: the model is told to carry on, or it might wait for the caller to speak first.
CARRY_ON = "You have just taken over this call. Answer the caller's last message now."


# ---- server events ---------------------------------------------------------------------------


def _ms(value: Any) -> float | None:
    """A number the server sent (a timeline field such as ``start_ms``), else None: unknown."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _n(d: Any, key: str) -> int:
    """A count in a usage block, 0 when absent or not a number."""
    value = _ms(d.get(key)) if isinstance(d, dict) else None
    return int(value) if value is not None else 0


def backend_tokens(usage: dict[str, Any]) -> dict[str, int]:
    """A Responses usage block by billing kind: text in (cached apart), text out."""
    cached = _n(usage.get("input_tokens_details"), "cached_tokens")
    return {"text_in": max(_n(usage, "input_tokens") - cached, 0), "text_cached": cached,
            "text_out": _n(usage, "output_tokens")}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Said:
    """One output transcript delta: its text and where it is spoken on the session's timeline."""

    delta: str
    start_ms: float | None
    end_ms: float | None


@dataclass
class _Reply:
    reply_id: str
    item_id: str
    request: bool  # started in answer to one of our requests
    text: list[_Said] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)  # silence not yet known to be inside speech
    audio_ms: float | None = None  # where its first audio is on the session's timeline, if said


def _timing(said: Sequence[_Said], audio_ms: float | None) -> tuple[str, tuple[TextSpan, ...]]:
    """A reply's text, and where each stretch of it is spoken in the reply's audio: the session
    timeline's times, from where the reply's audio starts (the first audio delta's ``start_ms``,
    else its first timed transcript delta's, which is spoken with that audio)."""
    text = "".join(s.delta for s in said)
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    timed: list[tuple[int, float, float]] = []  # (end in the stripped text, start, end on the timeline)
    end = -lead
    for s in said:
        end += len(s.delta)
        if s.start_ms is not None and s.end_ms is not None and end > 0:
            timed.append((min(end, len(text)), s.start_ms, s.end_ms))
    if not timed:
        return text, ()
    origin = audio_ms if audio_ms is not None else min(t[1] for t in timed)
    spans: list[TextSpan] = []
    for end, start, stop in timed:
        start_ms, end_ms = max(0.0, start - origin), max(0.0, stop - origin)
        if spans and start_ms < spans[-1].end_ms:  # out of order or overlapping: keep time moving on
            start_ms = spans[-1].end_ms
        spans.append(TextSpan(end, start_ms, max(start_ms, end_ms)))
    return text, tuple(spans)


@dataclass
class _CallerTurn:
    item_id: str
    start_ms: float | None
    end_ms: float | None
    last: float  # monotonic time of its latest transcript delta
    text: list[str] = field(default_factory=list)
    started: bool = False  # CallerSpeechStarted was yielded


class LiveTurns:
    """GPT-Live's server events (JSON objects) in, engine-neutral events out; the turn-taking state
    of one session. Time comes in as arguments (``now``: monotonic seconds), so it is tested without
    sockets or sleeps: :meth:`event` for each server event, :meth:`tick` when :meth:`deadline`
    passes.

    Args:
        prefix: makes this session's reply and item ids unique in the call.
        caller_gap_s: a pause in the caller's transcript this long ends the caller's turn.
        backend_model: the delegated model, its tokens priced under it.
    """

    def __init__(self, prefix: str, caller_gap_s: float, backend_model: str) -> None:
        self.prefix, self.caller_gap_s, self.backend_model = prefix, caller_gap_s, backend_model
        self._n = 0
        self.reply: _Reply | None = None
        self.caller: _CallerTurn | None = None
        self.last_voiced = 0.0
        self.talked_over = False  # the caller speaks over the open reply
        self.pending: tuple[str, float, bool] | None = None  # (request id, since, had instructions)
        self.outputs_waiting = False  # tool outputs sent since the last response.create
        self.calls: dict[str, list[ReplyItem]] = {}  # backend function calls by delegation
        self.seconds = 0.0  # cumulative session seconds reported so far
        self.session_id = ""
        self.closed_reason: str | None = None
        self.agent_text: list[_Said] = []  # output transcript not yet given to a reply

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self.prefix}_{self._n}"

    # ---- requests ---------------------------------------------------------------------------
    def asked(self, request_id: str, now: float, *, instructions: bool) -> None:
        self.pending = (request_id, now, instructions)

    def deadline(self) -> float | None:
        times = []
        if self.caller is not None:
            times.append(self.caller.last + self.caller_gap_s)
        if self.reply is not None:
            times.append(self.last_voiced + (YIELD_S if self.talked_over else REPLY_GAP_S))
        if self.pending is not None:
            times.append(self.pending[1] + REPLY_WAIT_S)
        return min(times) if times else None

    # ---- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        reply = self.reply
        if reply is not None and self.talked_over and now - self.last_voiced >= YIELD_S:
            out += self._yielded()
        elif reply is not None and now - self.last_voiced >= REPLY_GAP_S:
            out += self._end_reply("completed")
        if self.caller is not None and now - self.caller.last >= self.caller_gap_s:
            out += self._end_caller(now)
        if self.pending is not None and now - self.pending[1] >= REPLY_WAIT_S:
            request_id, _, instructions = self.pending
            self.pending = None
            reply_id = self._id("noreply")
            log.warning("reply %s not begun after %.0f s", request_id, REPLY_WAIT_S)
            # Speech that was asked for and never came failed (the conversation retries once, then
            # apologises); an answer left to the model that it chose not to give is simply over.
            out += [ReplyStarted(reply_id), ReplyFinished(reply_id, "failed" if instructions else "completed",
                                                          error_code="no_speech" if instructions else None)]  # fmt: skip
        return out

    # ---- server events ----------------------------------------------------------------------
    def event(self, ev: dict[str, Any], now: float) -> list[EngineEvent]:
        """One server event. Raises KeyError, TypeError, ValueError on a malformed one."""
        kind = ev.get("type")
        if kind == "session.output_audio.delta":
            return self._audio(base64.b64decode(ev.get("delta") or ""), now, _ms(ev.get("start_ms")))
        if kind == "session.output_transcript.delta":
            said = _Said(str(ev.get("delta") or ""), _ms(ev.get("start_ms")), _ms(ev.get("end_ms")))
            (self.reply.text if self.reply is not None else self.agent_text).append(said)
            return []
        if kind == "session.input_transcript.delta":
            return self._caller_delta(str(ev.get("delta") or ""), _ms(ev.get("start_ms")), _ms(ev.get("end_ms")), now)
        if kind == "response.event":
            return self._backend(ev["event"], str(ev.get("delegation_id") or "uncorrelated"))
        if kind == "session.usage.updated":
            return self._seconds(float(ev["usage"]["seconds"]))
        if kind == "session.closed":
            self.closed_reason = str(ev.get("reason") or "close_requested")
            # What was under way ends with the session (a call that hangs up right after the
            # agent's last words must keep them): the caller's turn, and the reply, completed if
            # the model had already fallen silent, else cut off.
            out = self._end_caller(now)
            if self.reply is not None:
                out += self._end_reply("completed" if now - self.last_voiced >= YIELD_S else "cancelled")
            return out + self._seconds(float((ev.get("usage") or {}).get("seconds") or 0.0))
        if kind == "error":
            error = ev.get("error") or {}
            request_id = error.get("client_event_id") or ev.get("client_event_id")
            if self.pending is not None and request_id == self.pending[0]:
                self.pending = None
            return [EngineError(str(error.get("code") or error.get("type") or "unknown"),
                                str(error.get("message") or ""), request_id)]  # fmt: skip
        return []

    def _audio(self, audio: bytes, now: float, start_ms: float | None = None) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        loud = voiced(audio)
        reply = self.reply
        if reply is None:
            if not loud:
                return out  # the model's idle output: silence
            if self.caller is not None:
                out += self._end_caller(now)  # the agent answers: the caller's turn is over
            request = self.pending is not None
            self.pending = None
            reply = self.reply = _Reply(self._id("reply"), self._id("item"), request, text=self.agent_text,
                                        audio_ms=start_ms)  # fmt: skip
            self.agent_text = []
            out.append(ReplyStarted(reply.reply_id))
        if not loud:
            reply.held.append(audio)  # played only if speech follows
            return out
        self.last_voiced = now
        for held in reply.held:
            out.append(AgentAudio(reply.reply_id, reply.item_id, held))
        reply.held.clear()
        out.append(AgentAudio(reply.reply_id, reply.item_id, audio))
        return out

    def _caller_delta(self, delta: str, start_ms: float | None, end_ms: float | None, now: float) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        turn = self.caller
        if turn is None:
            turn = self.caller = _CallerTurn(self._id("caller"), start_ms, None, now)
            if self.reply is None:
                turn.started = True
                out.append(CallerSpeechStarted(turn.item_id, start_ms))
            elif now - self.last_voiced >= YIELD_S:
                out += self._yielded()  # the model already fell silent for the caller
            else:
                self.talked_over = True  # it may yield (then a barge-in) or carry on (a backchannel)
        turn.text.append(delta)
        turn.last = now
        if end_ms is not None:
            turn.end_ms = end_ms
        return out

    def _yielded(self) -> list[EngineEvent]:
        """The caller spoke over the reply and the model stopped: a barge-in."""
        self.talked_over = False
        out: list[EngineEvent] = []
        turn = self.caller
        if turn is not None and not turn.started:
            turn.started = True
            out.append(CallerSpeechStarted(turn.item_id, turn.start_ms))
        return out + self._end_reply("cancelled")

    def _end_reply(self, status: ReplyStatus) -> list[EngineEvent]:
        reply, self.reply = self.reply, None
        self.talked_over = False
        if reply is None:
            return []
        text, timing = _timing(reply.text, reply.audio_ms)
        item = ReplyItem("message", reply.item_id, "completed" if status == "completed" else "incomplete", text=text)
        return [AgentAudioDone(reply.item_id), AgentText(reply.item_id, text, timing),
                ReplyFinished(reply.reply_id, status, (item,))]  # fmt: skip

    def _end_caller(self, now: float) -> list[EngineEvent]:
        turn, self.caller = self.caller, None
        self.talked_over = False  # the model talked on through the caller's turn: no barge-in
        if turn is None:
            return []
        text = "".join(turn.text).strip()
        out: list[EngineEvent] = []
        if turn.started:
            # The caller stopped at their last words: turn latency counts from there.
            out.append(CallerSpeechStopped(turn.end_ms, ago_ms=max(0.0, (now - turn.last) * 1000)))
        out.append(CallerText(turn.item_id, text, None if text else "empty transcript"))
        return out

    def _seconds(self, total: float) -> list[EngineEvent]:
        """Cumulative session seconds as an increment (the totals must not be summed)."""
        if total <= self.seconds:
            return []
        delta, self.seconds = total - self.seconds, total
        return [UsageUpdated(f"{self.session_id or self.prefix}@{total:.1f}s", Usage(seconds=round(delta, 3)))]

    def _backend(self, inner: dict[str, Any], delegation: str) -> list[EngineEvent]:
        kind = inner.get("type")
        if kind == "response.output_item.done":
            item = inner.get("item") or {}
            # Arguments are final only in a completed call.
            if item.get("type") != "function_call" or item.get("status") not in ("completed", None):
                return []
            call = ReplyItem("function_call", str(item.get("id") or ""), "completed", call_id=str(item["call_id"]),
                             name=str(item["name"]), arguments=str(item.get("arguments") or ""))  # fmt: skip
            self.calls.setdefault(delegation, []).append(call)
            return [ToolCallRequested(call.call_id, call.name, call.arguments, call.item_id or None)]
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = inner.get("response") or {}
            usage = response.get("usage")
            used = (Usage(tokens=backend_tokens(usage), model=str(response.get("model") or self.backend_model))
                    if isinstance(usage, dict) and usage else None)  # fmt: skip
            reply_id = str(response.get("id") or self._id("backend"))
            calls = self.calls.pop(delegation, [])
            status: ReplyStatus = "completed" if kind == "response.completed" else (
                "incomplete" if kind == "response.incomplete" else "failed")
            if calls:
                # The backend waits for these calls' outputs: the conversation runs them, sends
                # them and asks for a reply, which continues this delegation.
                return [ReplyFinished(reply_id, status, tuple(calls), usage=used)]
            out: list[EngineEvent] = [UsageUpdated(reply_id, used)] if used is not None else []
            if status != "completed":
                error = response.get("error") or response.get("incomplete_details") or {}
                out.append(EngineError(f"delegation_{status}", str(error.get("message") or error.get("reason") or "")))
            return out
        return []


# ---- the connection --------------------------------------------------------------------------


class LiveConnection(SocketConnection):
    """A call's connection to GPT-Live (:class:`dialtone_bridge.engine.ModelConnection`).

    Args:
        url: the Live WebSocket URL (``OPENAI_LIVE_URL``).
        model: the live model (the agent's ``live_model``).
        api_key: the API key; None for a simulator that needs none.
        log: the call's logger.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, url: str, model: str, api_key: str | None, log: logging.LoggerAdapter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.url, self.model = url, model
        self.transcription_model = model  # the caller's words are transcribed within the session
        self._key, self.log, self._clock = api_key, log, clock
        self._ws: ClientConnection | None = None
        self._spec: SessionSpec | None = None
        self._turns = LiveTurns(uuid.uuid4().hex[:8], 0.5, "")
        self._closed = asyncio.Event()
        self._calls: set[str] = set()  # function calls of this session awaiting their output
        self._resumed = False  # started from history, not yet asked to reply

    async def open(self, spec: SessionSpec, history: Sequence[HistoryLine] = ()) -> None:
        ws = None
        try:
            ws = await open_socket(self.url, self._key)  # no query: the model is in session.start
            await ws.send(session_start(spec, self.model, history))
            session_id = await self._await_started(ws)
            # Transcript fragments stop during a pause and the rest may come only once the model's
            # own detection ends the utterance: the turn is over after the agent's silence and a margin.
            gap = max(CALLER_GAP_S, spec.agent.silence_duration_ms / 1000 + 0.3)
            self._turns = LiveTurns(uuid.uuid4().hex[:8], gap, spec.agent.backend_model)
            self._turns.session_id = session_id
            self._closed = asyncio.Event()
            self._calls.clear()
            self._resumed = bool(history)
            self._ws, ws, self._spec = ws, None, spec
        except (OSError, InvalidHandshake, InvalidStatus, ConnectionClosed, TimeoutError, ValueError, KeyError) as exc:
            raise EngineUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            if ws is not None:  # a socket that was not handed over must not linger (and bill)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)

    async def _await_started(self, ws: ClientConnection) -> str:
        """Read until ``session.started``; check the formats really are mu-law at 8 kHz."""
        async with asyncio.timeout(10):
            async for raw in ws:
                event = orjson.loads(raw)
                kind = event.get("type")
                if kind == "session.started":
                    session = event["session"]
                    fmt = (session.get("audio") or {}).get("format") or {}
                    if fmt.get("type") != "audio/pcmu" or fmt.get("rate") != 8000:
                        raise EngineUnavailable(f"session format is {fmt}, not audio/pcmu at 8000 Hz")
                    return str(session.get("id") or "")
                if kind == "error":
                    raise EngineUnavailable(f"session.start refused: {event.get('error')}")
                if kind == "session.closed":
                    raise EngineUnavailable(f"session closed at start: {event.get('reason')}")
        raise EngineUnavailable("socket closed before session.started")

    async def events(self) -> AsyncIterator[EngineEvent]:
        ws = self._ws
        turns = self._turns
        if ws is None:
            yield Closed("not open")
            return
        cause = "closed"
        try:
            while turns.closed_reason is None:
                deadline = turns.deadline()
                try:
                    if deadline is None:
                        raw = await ws.recv()
                    else:
                        raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - self._clock()))
                except TimeoutError:
                    for parsed in turns.tick(self._clock()):
                        yield parsed
                    continue
                try:
                    event = orjson.loads(raw)
                    if not isinstance(event, dict):
                        raise TypeError("not an object")
                except (orjson.JSONDecodeError, TypeError):
                    m.REALTIME_ERRORS.labels("bad_event").inc()
                    self.log.warning("non-JSON message from GPT-Live: %.100r", raw)
                    continue
                now = self._clock()
                try:
                    out = turns.event(event, now)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    m.REALTIME_ERRORS.labels("bad_event").inc()
                    self.log.error("could not read a %s event: %r", event.get("type"), exc)
                    continue
                for parsed in out + turns.tick(now):
                    if isinstance(parsed, ToolCallRequested):
                        self._calls.add(parsed.call_id)
                    yield parsed
            reason = turns.closed_reason or "close_requested"
            cause = CLOSE_CAUSES.get(reason, reason)
            self.log.info("GPT-Live session closed (%s)", reason)
        except ConnectionClosed as exc:
            cause = f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}"
        finally:
            self._closed.set()
        if self._ws is ws:
            self._ws = None
        yield Closed(cause)

    async def append_audio(self, audio: bytes) -> bool:
        return await self._send(append(audio))

    async def reply(self, request_id: str, instructions: str | None, *, out_of_band: bool = False) -> bool:
        """Steered speech goes as commentary (the model cannot keep anything out of its own
        conversation: ``out_of_band`` is not possible here); a reply after tool outputs continues
        the delegation; otherwise the model answers when it sees fit, and the reply is the next
        thing it says."""
        if self._ws is None:
            return False
        turns = self._turns
        resumed, self._resumed = self._resumed, False
        if instructions:
            sent = await self._send(commentary(instructions, request_id))
        elif turns.outputs_waiting:
            sent = await self._send(response_create(request_id))
            turns.outputs_waiting = not sent
        elif resumed:
            sent = await self._send(commentary(CARRY_ON, request_id))
        else:
            sent = True
        if sent:
            turns.asked(request_id, self._clock(), instructions=bool(instructions))
        return sent

    async def cancel_reply(self) -> bool:
        return False  # the model decides itself when to stop

    async def tool_result(self, call_id: str, output: Any) -> bool:
        if call_id not in self._calls:
            # A call of another session (the engine changed under a handoff): nothing waits for it.
            self.log.info("tool output for %s dropped: not a call of this session", call_id)
            return True
        if await self._send(function_output(call_id, output)):
            self._calls.discard(call_id)
            self._turns.outputs_waiting = True
            return True
        return False

    async def heard(self, item_id: str, audio_ms: int, request_id: str) -> bool:
        return True  # the model heard the caller cut in and stopped where it was: nothing to cut

    async def forget(self, item_id: str) -> bool:
        return True  # nothing to delete: GPT-Live keeps no items the client can edit

    async def caller_text(self, item_id: str, text: str) -> bool:
        return await self._send(commentary(text))

    async def update(self, spec: SessionSpec) -> bool:
        self._spec = spec
        return await self._send(session_update(spec))

    async def close(self) -> None:
        """Close the session (``session.close``), waiting briefly for ``session.closed`` and its
        final usage while the reader still runs, then the socket."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        with contextlib.suppress(Exception):
            await ws.send(SESSION_CLOSE)
            await asyncio.wait_for(self._closed.wait(), CLOSE_WAIT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 1.0)
