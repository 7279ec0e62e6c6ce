"""The conversation of one call: engine-neutral model events in (``engine.py``), decisions out.

Turn-taking is the model's (server VAD); this class keeps the bookkeeping the model cannot do for
a phone line: which items came in which order (transcripts finish out of order), what the caller
has actually heard (barge-in), which tool calls a response is waiting on, and the call's events.

What the model sends is not always tidy, and each case has one rule here:

- One response may hold several output items (a short preamble message then the answer, speech
  then a function call, several function calls): every item is played, transcribed and run, in
  the order of the response's output; the tool results of a response go back together, then one
  ``response.create``.
- Barge-in: the item being played is truncated where the caller stopped hearing it. An item the
  caller heard nothing of (the cut fell at 0 ms, where a truncate is refused, or an item queued
  behind the one being played) is deleted from the model's conversation, so the model does not
  believe it said it. Their transcript lines are ``interrupted``, with ``heard_ms`` of
  ``audio_ms`` and the text cut to the heard part (``heard.py``), the whole text kept in
  ``full_text``; this holds whether or not the reply had finished generating when the caller cut
  in. A line already published when its response ended is published again, corrected, under a
  higher ``rev`` (the writer keeps one row per item, the highest ``rev``).
- The caller's words may fail to transcribe (``...input_audio_transcription.failed``, or an empty
  transcript): the line is still recorded, ``untranscribed`` with empty text, never dropped.
- A response that ends ``failed`` (or ``incomplete`` before the caller heard anything) is asked
  for again once; if that fails too, the agent apologises (:data:`APOLOGY`) so the caller is not
  left in silence. A failed goodbye is given up and the hang-up goes ahead; a filler or apology
  is not retried. Lines of an ``incomplete`` response are recorded ``interrupted`` (the model
  stopped early; the reason is logged).
- Rate limits the engine reports set the ``dialtone_bridge_realtime_rate_limit_remaining`` gauge.

Nothing here reads or writes a provider's JSON: the model is a :class:`engine.ModelConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from dialtone_proto.events import (
    AgentChanged,
    CallMetric,
    CallStarted,
    CallStatus,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    UsageReported,
)
from dialtone_proto.frames import Kind
from dialtone_proto.tools import ToolAction, ToolCallReply, ToolCallRequest, ToolSpec

from dialtone_bridge import metrics as m
from dialtone_bridge import pricing
from dialtone_bridge.agents import Agent
from dialtone_bridge.engine import (
    AgentAudio,
    AgentAudioDone,
    AgentText,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerText,
    EngineError,
    EngineEvent,
    HistoryLine,
    ItemPlaced,
    RateLimits,
    ReplyFinished,
    ReplyStarted,
    SessionSpec,
    TextSpan,
    ToolCallRequested,
    Usage,
    UsageUpdated,
)
from dialtone_bridge.engines import session_spec
from dialtone_bridge.heard import cut_text
from dialtone_bridge.phase import Activity, Phase
from dialtone_bridge.recovery import Restored
from dialtone_bridge.responses import Purpose, Request, Responses
from dialtone_bridge.roles import CallLine, Control

log = logging.getLogger("dialtone.bridge.conversation")

# Errors that are races between our requests and the server's own turn-taking, not failures.
BENIGN_ERRORS = {"conversation_already_has_active_response", "response_cancel_not_active"}
# Said when the model failed to answer twice in a row, rather than leave the caller in silence.
APOLOGY = "I'm sorry, I had a problem just now. Could you say that again?"
HANDOFF_WAIT_S = 2.0  # a handoff to another connection waits this long at most for the caller's last words


def _trim(recent: dict, keep: int = 64) -> None:
    """Keep a per-item dict to its ``keep`` newest entries."""
    while len(recent) > keep:
        del recent[next(iter(recent))]


@dataclass
class Line:
    seq: int
    role: str
    text: str


@dataclass
class ToolRun:
    call_id: str
    name: str
    task: asyncio.Task


class Conversation:
    """The conversation of one call.

    Args:
        line: the call's session (audio out, the model connection, events, the phase).
        agent: the agent answering.
    """

    control: Control  # the call's control: attached by the session once both exist

    def __init__(self, line: CallLine, agent: Agent) -> None:
        self.s = line
        self.agent = agent
        self.log = line.log
        self._order: dict[str, int] = {}
        self._agent_text: dict[str, str] = {}
        self._timing: dict[str, tuple[TextSpan, ...]] = {}  # item -> where its text is spoken, if known
        self._truncated: set[str] = set()
        self._truncates: deque[str] = deque(maxlen=16)  # ids of the truncates sent, to know a refused one
        self._cancelled: set[str] = set()
        self._played: list[str] = []  # message items in the order their audio went to the caller
        self._unheard: set[str] = set()  # items the caller heard none of (deleted, no line)
        self._to_delete: list[str] = []  # unheard items to delete once their response is done
        self._written: dict[str, tuple[str, str, int]] = {}  # recent agent lines: item -> (text, purpose, rev)
        self._generated: dict[str, int] = {}  # recent items: bytes of audio the model generated
        self._heard: dict[str, int] = {}  # items the caller cut: ms they heard (the truncate point)
        self._offsets: dict[str, float] = {}  # caller items: where their speech started (stream ms)
        self.responses = Responses()
        self._oob_items: set[str] = set()  # items of out-of-band responses (fillers)
        self._tools: dict[str, ToolRun] = {}  # tool call_id -> run
        self.lines: list[Line] = []  # what was said, for restoring a lost socket
        self._first_audio = False
        self._spoke: set[str] = set()  # responses that produced audio
        self._quiet = asyncio.Event()  # set whenever the agent stops talking
        self.outcome: str | None = None
        self.state = Activity.LISTENING
        self._catalog: dict[str, ToolSpec] = {}
        self.voice = agent.voice  # fixed once the caller has heard it, even across handoffs
        self._untold = 0  # caller turns ended whose text has not come yet (a handoff waits for them)
        self._spoken_to: dict[str, str] = {}  # caller item -> the agent on the line when it began

    # ---- session -------------------------------------------------------------------------
    async def spec(self) -> SessionSpec:
        """What the model is to be for the current agent: instructions, tools (those the runners
        offer) and the call's voice (fixed once the caller has heard it, even across handoffs)."""
        spec = await session_spec(self.s.ctx, self.agent, self.voice)
        self._catalog = {t.name: t for t in spec.tools}
        if self.agent.tools != "*" and (missing := [n for n in self.agent.tools if n not in self._catalog]):
            self.log.warning("agent %s names tools the runners do not offer: %s", self.agent.name, missing)
        return spec

    async def started(self) -> None:
        o = self.s.offer
        self.s.events.emit(
            CallStarted,
            stream_sid=o.stream_sid,
            account_sid=o.account_sid,
            agent=self.agent.name,
            from_number=o.from_number,
            to_number=o.to_number,
            direction=o.direction,
            bridge_id=self.s.ctx.bridge_id,
            variables=o.parameters,
        )
        answered_by = o.parameters.get("answered_by", "")
        if answered_by:
            # Who answered (answering-machine detection), as Twilio told the voice webhook.
            self.s.events.emit(CallStatus, status="in-progress", source="bridge", answered_by=answered_by,
                               direction=o.direction)
        if answered_by.startswith("machine") or answered_by == "fax":
            await self._voicemail(answered_by)
        elif self.agent.greeting:
            await self.request_response(f'Greet the caller by saying exactly: "{self.agent.greeting}"',
                                        purpose="greeting")

    async def _voicemail(self, answered_by: str) -> None:
        """An answering machine picked up: leave the agent's message, or hang up, as it says."""
        if self.agent.voicemail == "leave_message" and self.agent.voicemail_message and answered_by != "fax":
            self.log.info("voicemail (%s): leaving the agent's message", answered_by)
            await self.control.say_goodbye("voicemail_left", self.agent.voicemail_message)
        else:
            self.log.info("voicemail (%s): hanging up", answered_by)
            self.s.spawn(self.control.hang_up("voicemail_hangup"), "hang-up")

    def finished(self) -> None:
        for run in self._tools.values():
            run.task.cancel()

    def history(self) -> list[HistoryLine]:
        """A new connection after a lost one: the conversation so far as text, so the caller
        keeps talking to the same agent that remembers what was said."""
        self.responses.reset()
        return [HistoryLine("caller" if line.role == "caller" else "agent", line.text) for line in self.lines]

    def restore(self, restored: Restored) -> None:
        """Take over a conversation another bridge lost: its lines (for ``history``), its outcome,
        and its place in the transcript, so new lines follow the old ones. No greeting again."""
        self.lines = [Line(line.seq, line.role, line.text) for line in restored.lines]
        self._order = {f"restored-{n}": n for n in range(restored.next_seq)}
        self.outcome = restored.outcome
        self._first_audio = True

    def socket_lost(self) -> None:
        self.responses.reset()
        self._untold = 0

    async def caller_told(self, timeout: float) -> None:
        """Until the text of every caller turn that ended has come (or ``timeout``): a connection
        about to be replaced may still owe the caller's last words, which the new one must be given."""
        async with asyncio.timeout(timeout):
            while self._untold:  # noqa: ASYNC110 - a handoff, a few 20 ms polls at most
                await asyncio.sleep(0.02)

    # ---- ordering ------------------------------------------------------------------------
    def _place(self, item_id: str) -> int:
        seq = self._order.get(item_id)
        if seq is None:
            seq = self._order[item_id] = len(self._order)
        return seq

    def _line(self, item_id: str, role: str, text: str, *, remember: bool = True, **extra: Any) -> None:
        seq = self._place(item_id)
        if remember:
            self.lines.append(Line(seq, role, text))
        if extra.get("offset_ms") is None:
            offset = self._offsets.pop(item_id, None)
            extra["offset_ms"] = None if offset is None else round(offset, 1)
        # A caller's words belong to the agent they were said to, even if their text comes after
        # a handoff.
        agent = self._spoken_to.pop(item_id, self.agent.name) if role == "caller" else self.agent.name
        self.s.events.emit(TranscriptLine, item_id=item_id, seq=seq, role=role, text=text, agent=agent, **extra)

    # ---- server events -------------------------------------------------------------------
    async def on_event(self, ev: EngineEvent) -> None:
        match ev:
            case AgentAudio():
                await self._agent_audio(ev)
            case AgentAudioDone():
                await self.s.flush_audio(ev.item_id)
            case CallerSpeechStarted():
                if ev.item_id:
                    self._spoken_to[ev.item_id] = self.agent.name
                    _trim(self._spoken_to)
                if ev.item_id and ev.audio_start_ms is not None:
                    self._offsets[ev.item_id] = self.s.stream_ms(ev.audio_start_ms)
                    _trim(self._offsets)
                self.s.turns.speech_started()
                self.control.speech_started()
                await self._barge_in()
            case CallerSpeechStopped():
                end = ev.audio_end_ms
                self._untold += 1
                self.s.turns.speech_stopped(self.s.clock.ms() - ev.ago_ms,
                                            None if end is None else round(self.s.stream_ms(end), 1))
                self.control.speech_stopped()
            case ItemPlaced():
                self._place(ev.item_id)
            case CallerText():
                self._untold = max(0, self._untold - 1)
                self._caller_said(ev)
            case RateLimits():
                for name, remaining in ev.remaining.items():
                    m.RATE_LIMIT_REMAINING.labels(name).set(remaining)
            case ReplyStarted():
                self.responses.created(ev.reply_id)
                self.state = Activity.SPEAKING
            case AgentText():
                self._agent_text[ev.item_id] = ev.text
                if ev.timing:
                    self._timing[ev.item_id] = ev.timing
                    _trim(self._timing)
            case ToolCallRequested():
                self._start_tool(ev.call_id, ev.name, ev.arguments, ev.item_id)
            case ReplyFinished():
                await self._response_done(ev)
            case UsageUpdated():
                self._used("response", ev.ref, ev.usage.model or self.s.model.model, ev.usage)
            case EngineError():
                self._error(ev)

    async def _agent_audio(self, ev: AgentAudio) -> None:
        self._generated[ev.item_id] = self._generated.get(ev.item_id, 0) + len(ev.audio)
        if ev.reply_id in self._cancelled:
            return  # audio of a reply the caller interrupted, still in flight
        purpose = self.responses.purpose_of(ev.reply_id)
        if not self._first_audio:
            self._first_audio = True
            elapsed = self.s.clock.ms()
            m.FIRST_AUDIO_SECONDS.observe(elapsed / 1000)
            if purpose == "greeting":
                m.GREETING_SECONDS.observe(elapsed / 1000)
            self.s.events.emit(CallMetric, name="first_agent_audio_ms", value=round(elapsed, 1))
        self.s.turns.reply_audio(ev.item_id, reply=purpose != "prompt", now_ms=self.s.clock.ms())
        self.state = Activity.SPEAKING
        self._spoke.add(ev.reply_id)
        if purpose == "filler":
            self._oob_items.add(ev.item_id)
        if not self._played or self._played[-1] != ev.item_id:
            self._played = [*self._played[-31:], ev.item_id]
        await self.s.play(ev.item_id, ev.audio)

    def _error(self, error: EngineError) -> None:
        m.REALTIME_ERRORS.labels(error.code).inc()
        if error.request_id in self._truncates:
            m.TRUNCATES_REFUSED.inc()
        self.responses.refused(error.request_id, error.code)
        if error.code in BENIGN_ERRORS:
            # A race with the server's own turn-taking: the conversation simply goes on.
            self.log.info("model race (%s) ignored", error.code)
            return
        self.log.error("model error %s: %s", error.code, error.message[:300])

    def _caller_said(self, ev: CallerText) -> None:
        if ev.failure is None and ev.text:
            self._line(ev.item_id, "caller", ev.text)
        else:
            self._untranscribed(ev.item_id, ev.failure or "empty transcript")
        if ev.usage is not None:
            self._used("transcription", ev.item_id, self.s.model.transcription_model, ev.usage)

    def _used(self, source: str, ref: str, model: str, usage: Usage) -> None:
        """Record what a reply or transcription used: the session's event (engine-neutral: tokens
        by kind, seconds) and the token and cost counters by kind."""
        tokens, costs = pricing.split(usage.tokens, self.s.ctx.settings.prices.get(model), usage.seconds)
        for kind, n in tokens.items():
            m.TOKENS.labels(kind).inc(n)
        for kind, usd in costs.items():
            m.COST.labels(kind).inc(usd)
        self.s.events.emit(
            UsageReported, source=source, ref=ref, model=model, seconds=usage.seconds,
            cost_usd=round(max(sum(costs.values()), 0.0), 8), tokens=tokens, costs=costs,
        )

    def _agent_line(self, item_id: str, text: str, purpose: str, *, interrupted: bool, rev: int = 0) -> None:
        """An agent line, with what the caller heard of it: ``heard_ms`` of ``audio_ms``, and the
        text cut to that when the caller cut the line off (the whole text in ``full_text``)."""
        generated = max(self._generated.get(item_id, 0) / 8, self.s.playout.item_generated_ms(item_id))
        audio_ms = round(generated, 1) if generated > 0 else None
        if item_id in self._unheard:
            heard_ms: float | None = 0.0
        elif item_id in self._heard:
            heard_ms = float(self._heard[item_id])
        else:
            heard_ms = audio_ms
        said, full_text = text, None
        if heard_ms is not None and audio_ms is not None and heard_ms < audio_ms:
            said, full_text = cut_text(text, heard_ms, audio_ms, self._timing.get(item_id, ())), text
        # A filler was heard, so it is in the transcript, but the model never had it; an unheard
        # item is deleted from the model's conversation.
        self._line(item_id, "agent", said, interrupted=interrupted, rev=rev, heard_ms=heard_ms, audio_ms=audio_ms,
                   full_text=full_text, offset_ms=self._agent_offset(item_id),
                   remember=purpose != "filler" and item_id not in self._unheard)
        self._written[item_id] = (text, purpose, rev)
        while len(self._written) > 32:
            del self._written[next(iter(self._written))]
        _trim(self._generated)
        _trim(self._heard)

    def _agent_offset(self, item_id: str) -> float | None:
        offset = self.s.playout.item_offset_ms(item_id)
        return None if offset is None else round(offset, 1)

    def _untranscribed(self, item_id: str, reason: str) -> None:
        """The caller said something the transcription has no text for: keep the line, flagged
        (not in the history a new socket gets: there is nothing to tell the model)."""
        m.UNTRANSCRIBED.inc()
        self.log.warning("caller's words could not be transcribed (%s)", reason)
        self._line(item_id, "caller", "", remember=False, untranscribed=True)

    async def _response_done(self, reply: ReplyFinished) -> None:
        rid = reply.reply_id
        request = self.responses.done(rid)
        purpose = request.purpose if request else "reply"
        status = reply.status
        m.RESPONSES.labels(status).inc()
        if reply.usage is not None:
            self._used("response", rid, reply.usage.model or self.s.model.model, reply.usage)
        calls: list[ToolRun] = []
        cancelled = rid in self._cancelled
        for item in reply.items:
            if item.kind == "message":
                text = self._agent_text.pop(item.item_id, None)
                if cancelled and item.item_id not in self._played:
                    self._forget(item.item_id)  # its audio came after the caller cut in: never played
                if text is None:
                    text = item.text
                if text.strip():
                    # Cut short: talked over, or the model stopped (incomplete, failed, cancelled).
                    interrupted = (item.item_id in self._truncated or item.item_id in self._unheard
                                   or item.status == "incomplete")  # fmt: skip
                    self._agent_line(item.item_id, text.strip(), purpose, interrupted=interrupted)
            elif item.kind == "function_call":
                if status == "completed":
                    calls.append(self._tools.get(item.call_id) or self._start_tool(
                        item.call_id, item.name, item.arguments, item.item_id or None))
                elif run := self._tools.pop(item.call_id, None):
                    run.task.cancel()  # the response was cut short: its tool call never happened
        self._cancelled.discard(rid)
        for item_id in self._to_delete:
            await self.s.model.forget(item_id)
        self._to_delete.clear()
        spoke = rid in self._spoke
        self._spoke.discard(rid)
        # The agent's state for the live view: working while its tools run, else listening.
        self.state = Activity.TOOL if calls or self._tools else Activity.LISTENING
        if status == "incomplete":
            self.log.warning("response %s incomplete (%s)", rid, reply.reason)
        if status == "failed" or (status == "incomplete" and not spoke and not calls):
            self._failed(request, reply)
        if spoke and purpose == "goodbye":
            self.control.goodbye_done()
        if not self.s.playout.playing:
            self._quiet.set()
        if calls:
            self.s.spawn(self._answer_tools(calls, spoke), "tools")
        elif self.responses.queue:
            await self._send_next()
        elif not self.s.playout.playing:
            self._settled()

    def _failed(self, request: Request | None, reply: ReplyFinished) -> None:
        """The model did not answer: ask once more, then apologise (queued; sent once settled)."""
        request = request or Request()  # a response the server started itself (server VAD)
        self.log.warning("response %s %s (%s: %s)", reply.reply_id, reply.status, reply.error_code,
                         (reply.error_message or "")[:200])
        if request.purpose in ("filler", "apology"):
            return  # the answer follows a filler anyway; an apology is the last resort
        if not request.retried:
            self.responses.queue.appendleft(request.retry())
        elif request.purpose == "goodbye":
            self.control.goodbye_done()  # the goodbye is given up: the hang-up goes ahead
        else:
            self.log.error("the model failed to answer twice: apologising to the caller")
            self.responses.queue.appendleft(Request(f'Say exactly: "{APOLOGY}"', "apology"))

    async def request_response(self, instructions: str | None = None, *, purpose: Purpose = "reply",
                               force: bool = False) -> None:
        """Ask the model to speak, unless a response is already running (then after it).
        ``force`` asks even after the goodbye (the goodbye itself)."""
        if self.s.phase.quiet and not force:
            return
        request = Request(instructions, purpose, force)
        if self.responses.active is not None:
            self.responses.queue.append(request)
            return
        await self._send(request)

    async def _send(self, request: Request) -> None:
        event_id = self.responses.sending(request)
        if not await self.s.model.reply(event_id, request.instructions, out_of_band=request.out_of_band):
            self.responses.send_failed(event_id)

    async def _send_next(self) -> None:
        while self.responses.queue and self.responses.active is None:
            request = self.responses.queue.popleft()
            if self.s.phase.quiet and not request.force:
                continue
            await self._send(request)

    def _settled(self) -> None:
        """The agent fell quiet. What follows (an idle timer, a REST hang-up) runs as its own task,
        so neither the caller's audio nor the model's events wait on Twilio's API."""
        self._quiet.set()
        self.s.spawn(self.control.playback_finished(), "settled")

    def busy(self) -> bool:
        """The agent is talking or working: not a moment to prompt an idle caller."""
        return self.speaking() or bool(self._tools) or bool(self.responses.queue)

    def speaking(self) -> bool:
        return self.responses.active is not None or self.s.playout.playing

    async def wait_quiet(self, timeout: float, settle_s: float = 0.0) -> None:
        """Until the agent has stopped talking (or ``timeout``), and stayed quiet ``settle_s``: an
        engine that speaks and calls a tool at once (GPT-Live) may start its words just after."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    if self.speaking():
                        self._quiet.clear()
                        await self._quiet.wait()
                    if settle_s <= 0:
                        return
                    await asyncio.sleep(settle_s)
                    if not self.speaking():
                        return

    # ---- barge-in ------------------------------------------------------------------------
    async def _barge_in(self) -> None:
        self.s.drop_audio()
        cut = self.s.playout.interrupt(self.s.clock.ms())
        if cut is None:
            return  # playback had finished: nothing to clear or truncate
        m.BARGE_INS.inc()
        active = self.responses.active
        if active:
            self._cancelled.add(active)
        await self.s.send_frame(Kind.CLEAR)
        played = self._played
        # Items queued behind the one being played were cleared before the caller heard any.
        unheard = played[played.index(cut.item_id) + 1 :] if cut.item_id in played else []
        if cut.audio_end_ms > 0:
            self._truncated.add(cut.item_id)
            self._heard[cut.item_id] = cut.audio_end_ms
            if cut.item_id not in self._oob_items:  # a filler is not in the conversation
                event_id = f"trunc_{uuid.uuid4().hex[:16]}"
                self._truncates.append(event_id)
                await self.s.model.heard(cut.item_id, cut.audio_end_ms, event_id)
        else:
            unheard.insert(0, cut.item_id)  # trap 8: a truncate to 0 ms is refused; nothing was heard
        for item_id in unheard:
            self._forget(item_id)
        for item_id in ([cut.item_id] if cut.audio_end_ms > 0 else []) + unheard:
            if written := self._written.get(item_id):  # its response ended before the caller cut in
                seq = self._order[item_id]
                self.lines = [line for line in self.lines if line.seq != seq]
                self._agent_line(item_id, written[0], written[1], interrupted=True, rev=written[2] + 1)
                self.lines.sort(key=lambda line: line.seq)
        if active is None:  # the response is over: its items can go now
            for item_id in self._to_delete:
                await self.s.model.forget(item_id)
            self._to_delete.clear()
        self.log.info(
            "barge-in: cut %s at %d ms (played ~%.0f of %.0f ms); %d unheard item(s) dropped",
            cut.item_id, cut.audio_end_ms, cut.played_ms, cut.generated_ms, len(unheard),
        )

    def hung_up(self) -> None:
        """The caller hung up with agent audio still queued at Twilio: a line already published
        says what they heard of it, as after a barge-in (nothing is sent: the call is over)."""
        cut = self.s.playout.interrupt(self.s.clock.ms())
        if cut is None:
            return
        played = self._played
        unheard = played[played.index(cut.item_id) + 1 :] if cut.item_id in played else []
        if cut.audio_end_ms > 0:
            self._heard[cut.item_id] = cut.audio_end_ms
        else:
            unheard.insert(0, cut.item_id)
        self._unheard.update(unheard)
        for item_id in [cut.item_id, *unheard]:
            if written := self._written.get(item_id):
                self._agent_line(item_id, written[0], written[1], interrupted=True, rev=written[2] + 1)
        self.log.info("hang-up over %s at %d ms of %.0f ms", cut.item_id, cut.audio_end_ms, cut.generated_ms)

    def _forget(self, item_id: str) -> None:
        """The caller heard none of this item: it gets no line and leaves the model's conversation
        (a filler never was in it), once its response is done."""
        if item_id in self._unheard:
            return
        self._unheard.add(item_id)
        if item_id not in self._oob_items:
            self._to_delete.append(item_id)

    # ---- tools ---------------------------------------------------------------------------
    def _start_tool(self, call_id: str, name: str, arguments: str, item_id: str | None) -> ToolRun:
        if call_id in self._tools:
            return self._tools[call_id]
        seq = self._place(item_id) if item_id else len(self._order)
        task = self.s.spawn(self._run_tool(call_id, name, arguments, seq), f"tool-{name}")
        run = self._tools[call_id] = ToolRun(call_id, name, task)
        self.state = Activity.TOOL
        return run

    async def _run_tool(self, call_id: str, name: str, arguments: str, seq: int) -> ToolCallReply:
        o = self.s.offer
        spec = self._catalog.get(name)
        request = ToolCallRequest(
            call_id=self.s.call_id, tool_call_id=call_id, name=name, arguments=arguments,
            agent=self.agent.name, from_number=o.from_number, to_number=o.to_number, variables=o.parameters,
        )
        started = time.monotonic()
        self.s.turns.tool_started(self.s.clock.ms())
        try:
            reply = await self.s.ctx.tools.call(request, spec.timeout_s if spec else None)
        finally:
            self.s.turns.tool_finished(self.s.clock.ms())
        m.TOOL_SECONDS.labels(name if spec else "unknown").observe(time.monotonic() - started)
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        self.s.events.emit(
            ToolCalled, tool_call_id=call_id, seq=seq, name=name, agent=self.agent.name,
            arguments=parsed if isinstance(parsed, dict) else None,
            raw_arguments=None if isinstance(parsed, dict) else arguments[:2000],
            ok=reply.ok, result=reply.output, error=reply.error,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        for action in reply.actions:
            await self._apply(action)
        return reply

    async def _answer_tools(self, runs: list[ToolRun], spoke: bool) -> None:
        """Send every result of a response, then ask for the next response (without it the model
        falls silent after a tool call)."""
        model = self.s.model
        filler = self.s.spawn(self._filler_after(self.s.ctx.settings.filler_after_s), "filler")
        try:
            replies = await asyncio.gather(*(r.task for r in runs))
        finally:
            filler.cancel()
        if self.s.phase.is_ended:
            return  # the caller hung up while the tool ran: the result has nowhere to go
        for run, reply in zip(runs, replies, strict=True):
            if self.s.model is model:  # (a handoff to another engine: the new one never made the call)
                await self.s.model.tool_result(run.call_id, reply.output)
            self._tools.pop(run.call_id, None)
        phase = self.s.phase.phase
        if phase is Phase.TRANSFERRING:
            return
        if phase is Phase.CLOSING:
            if spoke:
                # The model said its goodbye in the response that ended the call.
                self.control.goodbye_done()
                if not self.speaking():
                    self._settled()
                return
            await self.request_response(purpose="goodbye", force=True)  # let it say goodbye first
            return
        await self.request_response()

    async def _filler_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        # (No filler once the call is being transferred or closed: its own words are due.)
        if self.responses.active is None and not self.s.phase.is_ended and not self.s.phase.leaving:
            self.log.info("tool still running after %.1f s: filler", delay)
            await self._send(Request(f'Say exactly: "{self.agent.filler}"', "filler"))

    async def _apply(self, action: ToolAction) -> None:
        if action.action == "set_outcome" and action.value:
            self.outcome = action.value
            self.s.events.emit(OutcomeSet, outcome=action.value, detail=action.detail)
        elif action.action == "handoff" and action.value:
            await self.handoff(action.value)
        else:
            await self.control.apply(action)

    async def handoff(self, to_agent: str) -> None:
        """Another agent takes over: new instructions and tools, same audio formats and voice.
        An agent on another engine, or on GPT-Live (whose instructions are fixed once a session
        starts), takes over on a new connection that is given the conversation so far."""
        agents = self.s.ctx.agents.agents
        if to_agent not in agents or to_agent == self.agent.name:
            self.log.warning("handoff to unknown agent %s ignored", to_agent)
            return
        if self.agent.handoffs and to_agent not in self.agent.handoffs:
            self.log.warning("agent %s may not hand off to %s", self.agent.name, to_agent)
            return
        switching = agents[to_agent].engine != self.agent.engine or agents[to_agent].engine == "live"
        if switching:
            # The new connection is given the conversation so far: the caller's last words too,
            # which the old one may still owe (their lines stay the old agent's).
            with contextlib.suppress(TimeoutError):
                await self.caller_told(HANDOFF_WAIT_S)
        previous, self.agent = self.agent, agents[to_agent]
        if switching:
            await self.s.switch_engine()
        else:
            # session_config keeps the voice: it cannot change once the caller has heard it.
            await self.s.model.update(await self.spec())
        self.s.events.emit(AgentChanged, from_agent=previous.name, to_agent=to_agent)
        self.log.info("handoff %s -> %s", previous.name, to_agent)

    # ---- caller side ---------------------------------------------------------------------
    async def on_mark(self, name: str) -> None:
        if not self.s.playout.playing and self.responses.active is None:
            self._settled()

    async def on_dtmf(self, digit: str) -> None:
        item_id = f"dtmf_{uuid.uuid4().hex[:16]}"
        self._line(item_id, "caller", f"pressed {digit}", source="dtmf",
                   offset_ms=round(self.s.playout.caller_now(self.s.clock.ms()), 1))
        await self.s.model.caller_text(item_id, f"The caller pressed {digit} on the keypad.")
        await self.request_response()
