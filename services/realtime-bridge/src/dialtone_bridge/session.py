"""One call: the model connection (``engine.py``) on one side, the call's bus subjects on the other.

A ``CallSession`` owns every task it starts (the model reader, tool calls, the event publisher)
and cancels them when the call ends. The conversation logic lives in ``Conversation``
(``conversation.py``); this module is the plumbing: connecting, reconnecting, audio in and out.

When a draining gateway moves the call's Twilio stream to another gateway, the stream key stays:
this session keeps the call, its model socket and conversation. The new gateway's ``MOVED`` frame
says where the old stream stopped; the agent audio Twilio dropped with the old stream (sent, not
yet played) is sent again from the point the caller stopped hearing it (``_moved``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from dialtone_common.callbook import CallBookUnavailable
from dialtone_common.logs import CallLog
from dialtone_common.metrics import TRANSIT_SAMPLE
from dialtone_proto import CallOffer, subjects
from dialtone_proto.events import CallEnded, CallStatus, TurnMeasured
from dialtone_proto.frames import FrameError, Kind, decode_frame, encode_control, encode_frame, transit_ms
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dialtone_bridge import metrics as m
from dialtone_bridge.agents import Agent
from dialtone_bridge.callcontrol import CallControl
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.conversation import Conversation
from dialtone_bridge.engine import Closed, EngineUnavailable, ModelConnection
from dialtone_bridge.engines import model_connection
from dialtone_bridge.phase import CALL_GOES_ON, HANDED_OFF, HUNG_UP, LINE_STILL_OPEN, REPLACED, CallPhase
from dialtone_bridge.playout import Playout
from dialtone_bridge.publisher import EventPublisher
from dialtone_bridge.recovery import Restored
from dialtone_bridge.turns import Turn, TurnLatency

log = logging.getLogger("dialtone.bridge.call")

BACKLOG_BYTES = 8000 * 30  # 30 s of caller audio kept while the model socket (re)connects
MIN_CHUNK = 320  # agent audio goes to the gateway in chunks of at least 40 ms (each then marked)
STREAM_SILENT_S = 10.0  # Twilio sends media every 20 ms: this long without a frame, the stream is gone
LAST_WORDS_S = 1.5  # at the end, how long the caller's last words may take to be transcribed
__all__ = ["CALL_GOES_ON", "HANDED_OFF", "HUNG_UP", "LINE_STILL_OPEN", "REPLACED", "BridgeContext", "CallSession"]


@dataclass
class _Clock:
    started: float = field(default_factory=time.monotonic)

    def ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0


class CallSession:
    def __init__(
        self, ctx: BridgeContext, offer: CallOffer, agent: Agent, restored: Restored | None = None,
        preopened: asyncio.Task[ModelConnection] | None = None,
    ) -> None:
        """``offer`` carries the caller's details from the call record; ``restored`` is the
        conversation so far when this bridge takes over a call whose bridge was lost; ``preopened``
        is the model session this bridge began to open for the call at its voice webhook."""
        self.ctx, self.offer, self.call_id = ctx, offer, offer.call_id
        self.restored = restored
        self.log = CallLog(log, call_id=offer.call_id)
        self.clock = _Clock()
        self.events = EventPublisher(ctx.js, offer.call_id, self.log, offer.epoch)
        self._in_subject = subjects.call_in(offer.call_id, offer.stream_key)
        self._out_subject = subjects.call_out(offer.call_id, offer.stream_key)
        self.playout = Playout()
        self.turns = TurnLatency(on_measured=self._turn_measured)
        self.model: ModelConnection = model_connection(ctx, agent, self.log)
        self._preopened = preopened
        self.ready = asyncio.Event()  # the model connection is open
        self.phase = CallPhase()
        self._backlog = bytearray()
        # The model's input buffer on the stream's clock: ms of caller audio appended to the current
        # socket, and the media timestamp at the end of the latest caller frame (appended or held).
        self._appended_ms = 0.0
        self._in_end_ts = 0.0
        self._audio_lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._out_seq = 0
        self._tasks: set[asyncio.Task] = set()
        self._pending_audio: tuple[str, bytearray] | None = None  # (item, bytes) not yet 40 ms
        # Agent audio sent but not known played: (position, item, bytes), for a move to send again.
        self._unplayed: deque[tuple[int, str, bytes]] = deque()
        self._last_frame = time.monotonic()
        self.conversation = Conversation(self, agent)
        if restored is not None:
            self.conversation.restore(restored)
        self.control = CallControl(self, self.conversation, ctx.twilio)
        self.conversation.control = self.control

    @property
    def ended(self) -> asyncio.Event:
        return self.phase.ended

    @property
    def end_reason(self) -> str:
        return self.phase.end_reason

    async def switch_engine(self) -> None:
        """A handoff to an agent the current connection cannot serve (another engine, or GPT-Live,
        whose instructions are fixed at start): close it and open the new agent's, given the
        conversation so far. The reader moves on to the new connection once it is open."""
        old, self.model = self.model, model_connection(self.ctx, self.conversation.agent, self.log)
        self.ready.clear()
        self.log.info("handoff to agent %s: switching to a new %s connection",
                      self.conversation.agent.name, self.conversation.agent.engine)
        await old.close()
        self.conversation.socket_lost()
        try:
            await self._connect(restore=True)
        except EngineUnavailable as exc:
            self.log.error("the new agent's model could not be reached: %s", exc)
            self.end("realtime_unavailable")

    # ---- lifecycle -------------------------------------------------------------------------
    async def attach(self) -> None:
        """Subscribe to the caller's frames. Called before the claim is answered, so no frame
        sent after the gateway hears "accepted" can be missed."""
        self._sub = await self.ctx.nc.subscribe(self._in_subject, cb=self._on_in, pending_msgs_limit=20000)

    async def run(self) -> None:
        """The whole call, from the first socket to the last event."""
        labels = (self.conversation.agent.name, self.offer.direction)
        active = m.CALLS_ACTIVE.labels(*labels)
        active.inc()
        m.CALLS_STARTED.labels(*labels).inc()
        try:
            probe = self.playout.probe(self.clock.ms())
            if probe:
                await self.send_frame(Kind.MARK, {"name": probe})
            try:
                await self._connect(restore=self.restored is not None)
            except EngineUnavailable as exc:
                self.log.error("could not reach the model: %s", exc)
                self.end("realtime_unavailable")
                return
            self.spawn(self._read_loop(), "reader")
            self.spawn(self._watch_stream(), "watchdog")
            self.control.start()
            if self.restored is None:
                await self.conversation.started()
            else:
                await self._resumed()
            await self.ended.wait()
        except Exception:
            self.log.exception("call failed")
            self.end("bridge_error")
        finally:
            if self.end_reason in LINE_STILL_OPEN:
                if await self.still_holds():
                    with contextlib.suppress(Exception):
                        await self.control.release_line(self.end_reason)
                else:  # another bridge serves the call now: leave its line and its session alone
                    self.phase.end_reason = REPLACED
            await self._teardown()
            active.dec()
            m.CALLS_ENDED.labels(*labels, self.end_reason, m.outcome_label(self.conversation.outcome)).inc()

    async def _resumed(self) -> None:
        """This bridge took the call over: say so in the session, and let the caller know."""
        restored = self.restored
        assert restored is not None
        self.events.emit(CallStatus, status="recovered", source="bridge")
        self.log.warning("took the call over%s: %d lines restored from %d events",
                         " (handed off)" if self.offer.handoff else "", len(restored.lines), restored.events)
        m.RECOVERED.labels("handoff" if self.offer.handoff else "lost").inc()
        agent = self.conversation.agent
        # A planned hand-off needs no apology; a lost bridge left the caller in a gap.
        if agent.resumed and not self.offer.handoff:
            await self.conversation.request_response(f'Say exactly: "{agent.resumed}"', purpose="reply")

    async def still_holds(self) -> bool:
        """Whether the call's record still gives the call to this bridge under this offer. A bridge
        that was fenced off but missed the gateway's stop (it was disconnected, or stalled) learns
        it here, before it frees the line or ends the call through Twilio. When the record cannot
        be read, it assumes so: freeing a line beats leaving a caller in silence."""
        if self.ctx.calls is None:
            return True
        try:
            async with asyncio.timeout(2):
                record = await self.ctx.calls.get(self.call_id)
        except (CallBookUnavailable, TimeoutError):
            return True
        return record is None or record.held_by(self.offer.stream_key, self.offer.epoch, self.ctx.bridge_id)

    async def hand_off(self) -> None:
        """Leave the call to another bridge (this one is draining): the gateway re-offers it at
        once on this frame, and the bridge that takes it restores the conversation from its events."""
        if self.ended.is_set():
            return
        self.log.info("handing the call over to another bridge")
        with contextlib.suppress(Exception):
            await self.send_frame(Kind.HANDOFF, {"bridge": self.ctx.bridge_id})
        self.end(HANDED_OFF)

    async def heartbeat(self) -> None:
        """Tell the gateway this bridge still holds the call (its lease)."""
        if not self.ended.is_set():
            await self.send_frame(Kind.HEARTBEAT, {"bridge": self.ctx.bridge_id})

    async def _watch_stream(self) -> None:
        """A stream that stopped sending media without a stop (a gateway that died) ends the call.
        While NATS itself is down nothing arrives from any gateway: that is not the stream's fault."""
        while True:
            await asyncio.sleep(STREAM_SILENT_S / 4)
            if not self.ctx.nc.is_connected:
                self._last_frame = time.monotonic()
                continue
            if time.monotonic() - self._last_frame > STREAM_SILENT_S:
                # (If the call was given to another bridge meanwhile, ``run`` finds it out before
                # it would free the line, and ends the session as replaced.)
                self.log.warning("no media from the gateway for %.0f s: ending the call", STREAM_SILENT_S)
                self.end("stream_lost")
                return

    def end(self, reason: str) -> None:
        """End the call (idempotent). The model connection is closed at once by ``run``'s teardown."""
        self.phase.end(reason)

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        """Start a task owned by this call: cancelled when the call ends."""
        task = asyncio.create_task(coro, name=f"{name}-{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)
            if task.get_name().startswith("reader-"):
                self.end("bridge_error")  # without its reader the call would be silent forever

    async def _teardown(self) -> None:
        if self.ready.is_set():
            # The caller's last words (before a transfer, a hang-up) are transcribed after they
            # stopped speaking: a moment more for their text, or the transcript would lose them.
            with contextlib.suppress(TimeoutError):
                await self.conversation.caller_told(LAST_WORDS_S)
        self.ready.clear()
        await self.model.close()  # then at once: a lingering session keeps billing
        if (preopened := self._preopened) is not None:  # the call ended before it was needed
            self._preopened = None
            m.PREPARED.labels("unused").inc()
            with contextlib.suppress(Exception):
                await (await asyncio.wait_for(preopened, 15)).close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.end_reason in HUNG_UP:
            self.conversation.hung_up()  # what was playing when the caller left was cut there
        self.conversation.finished()
        self.turns.close()
        if self.end_reason not in CALL_GOES_ON:
            self.events.emit(CallEnded, reason=self.end_reason)
        await self.events.close()
        self.log.info("call ended (%s) after %.1f s", self.end_reason, self.clock.ms() / 1000)

    # ---- the model connection --------------------------------------------------------------
    async def _connect(self, *, restore: bool) -> None:
        s = self.ctx.settings
        delay = 0.2
        last: Exception | None = None
        if (preopened := self._preopened) is not None:
            self._preopened = None
            try:
                self.model = await preopened
                m.PREPARED.labels("used").inc()
                self.log.info("model session opened at the webhook: %.0f ms into the call", self.clock.ms())
                self._appended_ms = 0.0
                self.ready.set()
                await self._flush_backlog()
                await self.conversation.spec()  # the tools it was given, for the tool calls to come
                return
            except EngineUnavailable as exc:
                m.PREPARED.labels("failed").inc()
                self.log.warning("the model session opened at the webhook failed (%s): opening another", exc)
        for attempt in range(s.connect_attempts):
            if self.ended.is_set():
                return
            try:
                history = self.conversation.history() if restore else []
                await self.model.open(await self.conversation.spec(), history)
                self._appended_ms = 0.0  # a new connection's input buffer starts empty
                self.ready.set()
                await self._flush_backlog()
                return
            except EngineUnavailable as exc:
                last = exc
                self.log.warning("model connect attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise EngineUnavailable(str(last))

    async def _read_loop(self) -> None:
        while not self.ended.is_set():
            if not self.ready.is_set():
                return
            cause = "closed"
            model = self.model
            async for event in model.events():
                if isinstance(event, Closed):
                    cause = event.cause
                    break
                try:
                    await self.conversation.on_event(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    # One event we cannot use must not end the conversation.
                    m.REALTIME_ERRORS.labels("bad_event").inc()
                    self.log.error("could not handle %s: %r", type(event).__name__, exc)
            if self.ended.is_set():
                return
            if self.model is not model:  # a handoff switched engines: read the new connection
                await self.ready.wait()
                continue
            if cause == "content_filter":  # the model's safety filter ended the session
                self.log.warning("the model ended the session (content filter)")
                self.end("content_filter")
                return
            self.ready.clear()
            m.RECONNECTS.labels(cause.split(" ")[0]).inc()
            self.log.warning("model connection lost (%s); reconnecting", cause)
            self.conversation.socket_lost()
            try:
                await self._connect(restore=True)
            except EngineUnavailable as exc:
                self.log.error("model connection could not be restored: %s", exc)
                self.end("realtime_lost")
                return

    # ---- the caller's side (bus) ----------------------------------------------------------
    async def _on_in(self, msg: Msg) -> None:
        try:
            frame = decode_frame(msg.data)
        except FrameError as exc:
            m.BAD_FRAMES.inc()
            self.log.warning("bad frame from the gateway: %s", exc)
            return
        self._last_frame = time.monotonic()
        if (frame.kind is not Kind.AUDIO or frame.seq % TRANSIT_SAMPLE == 0) and (ms := transit_ms(frame)) is not None:
            m.BUS_TRANSIT.observe(ms / 1000)
        try:
            if frame.kind is Kind.AUDIO:
                self.playout.on_inbound_audio(frame.ts, self.clock.ms())
                self._in_end_ts = frame.ts + len(frame.payload) / 8
                async with self._audio_lock:
                    if self.ready.is_set() and not self._backlog:
                        await self._append(frame.payload)
                    else:
                        self._backlog += frame.payload
                        if (over := len(self._backlog) - BACKLOG_BYTES) > 0:
                            m.AUDIO_DROPPED.inc(over)
                            del self._backlog[:over]
                        if self.ready.is_set():
                            await self._flush_backlog_locked()
            elif frame.kind is Kind.MARK:
                name = str(frame.json().get("name", ""))
                now = self.clock.ms()
                self.playout.on_mark(name, now)
                self._forget_played()
                if (heard := self.turns.mark_echoed(name, now)) is not None:
                    m.TURN_HEARD_SECONDS.observe(heard)
                await self.conversation.on_mark(name)
            elif frame.kind is Kind.DTMF:
                await self.conversation.on_dtmf(str(frame.json().get("digit", "")))
            elif frame.kind is Kind.MOVED:
                await self._moved(frame.json())
            elif frame.kind is Kind.STOP:
                reason = frame.json().get("reason")
                self.log.info("stream stopped (%s)", reason)
                if reason == REPLACED:
                    self.end(REPLACED)
                else:
                    self.control.stream_stopped("caller_hangup" if reason == "stop" else "stream_closed")
        except FrameError as exc:
            m.BAD_FRAMES.inc()
            self.log.warning("bad control frame: %s", exc)

    def _forget_played(self) -> None:
        played = self.playout.played_to
        while self._unplayed and self._unplayed[0][0] + len(self._unplayed[0][2]) <= played:
            self._unplayed.popleft()

    async def _moved(self, body: dict[str, Any]) -> None:
        """The call's stream moved to another gateway (the same stream key): the caller hears the
        agent again from where the old stream stopped. Twilio dropped the audio it still held there,
        with its marks; send it again, from the point heard, as new chunks with new marks."""
        heard = self.playout.moved(float(body.get("stopped_ts") or 0))
        chunks, self._unplayed = self._unplayed, deque()
        replay: list[tuple[str, bytearray]] = []
        for start, item_id, audio in chunks:
            if (skip := heard - start) >= len(audio):
                continue
            piece = audio[max(0, skip):]
            if replay and replay[-1][0] == item_id and len(replay[-1][1]) < MIN_CHUNK:
                replay[-1][1].extend(piece)  # the cut chunk's rest is too short to go alone
            else:
                replay.append((item_id, bytearray(piece)))  # the chunks as they were sent
        first: set[str] = set()
        for item_id, again in replay:
            await self._send_audio(item_id, bytes(again), resent="first" if item_id not in first else "more")
            first.add(item_id)
        m.CALLS_MOVED.inc()
        m.MOVE_REPLAYED.observe(sum(len(a) for _, a in replay) / 8000)
        self.log.info("call moved from %s to %s (%s ms without a stream): %.0f ms of agent audio sent again",
                      body.get("from"), body.get("to"), body.get("gap_ms"), sum(len(a) for _, a in replay) / 8)

    async def _append(self, audio: bytes) -> None:
        if self.ready.is_set() and await self.model.append_audio(audio):
            self._appended_ms += len(audio) / 8
            m.FRAMES_IN.inc()
        else:
            self._backlog += audio

    def stream_ms(self, buffer_ms: float) -> float:
        """A position in the model's input buffer (``audio_start_ms``, ``audio_end_ms`` of the
        current socket) as a media timestamp: ms from the start of the stream. Exact while the
        caller's audio reached the model without a gap (no backlog dropped since)."""
        appended_end = self._in_end_ts - len(self._backlog) / 8
        return max(0.0, appended_end - (self._appended_ms - buffer_ms))

    def _turn_measured(self, turn: Turn) -> None:
        self.events.emit(TurnMeasured, turn=turn.n, item_id=turn.item_id, offset_ms=turn.offset_ms,
                         sent_ms=turn.sent_ms, heard_ms=turn.heard_ms, tool_ms=turn.tool_ms, tools=turn.tools,
                         received_ms=turn.received_ms)

    async def _flush_backlog(self) -> None:
        async with self._audio_lock:
            await self._flush_backlog_locked()

    async def _flush_backlog_locked(self) -> None:
        while self._backlog and self.ready.is_set():
            chunk = bytes(self._backlog[:1600])  # 200 ms per append
            if not await self.model.append_audio(chunk):
                return
            del self._backlog[: len(chunk)]
            self._appended_ms += len(chunk) / 8
            m.FRAMES_IN.inc()

    async def send_frame(self, kind: Kind, body: dict[str, Any] | None = None, audio: bytes = b"") -> None:
        """Publish one frame to the gateway (agent audio or control)."""
        if kind is Kind.CLEAR:
            self._unplayed.clear()  # a barge-in: what was queued at Twilio is not to be heard
        self._out_seq += 1
        data = (
            encode_frame(kind, self._out_seq - 1, int(self.clock.ms()), audio)
            if kind is Kind.AUDIO
            else encode_control(kind, self._out_seq - 1, int(self.clock.ms()), body or {})
        )
        assert self.ctx.bus is not None
        self.ctx.bus.publish(self._out_subject, data)  # with other calls' frames, within 1 ms

    async def play(self, item_id: str, audio: bytes) -> None:
        """Agent audio from the model to the caller, in chunks of at least 40 ms, each followed by
        a mark to follow its playout (a mark makes the gateway flush, so a shorter chunk would be
        padded with silence mid-sentence)."""
        if self._pending_audio is not None and self._pending_audio[0] != item_id:
            await self.flush_audio(self._pending_audio[0])
        if self._pending_audio is None:
            self._pending_audio = (item_id, bytearray())
        buffer = self._pending_audio[1]
        buffer += audio
        if len(buffer) >= MIN_CHUNK:
            await self.flush_audio(item_id)

    def drop_audio(self) -> None:
        """Barge-in: audio held back for coalescing will never be played."""
        self._pending_audio = None

    async def flush_audio(self, item_id: str) -> None:
        """Send what is held of ``item_id``'s audio (its end, or a change of item)."""
        if self._pending_audio is None or self._pending_audio[0] != item_id or not self._pending_audio[1]:
            return
        audio, self._pending_audio = bytes(self._pending_audio[1]), None
        await self._send_audio(item_id, audio)
        m.FRAMES_OUT.inc()
        m.AUDIO_OUT.inc(len(audio))

    async def _send_audio(self, item_id: str, audio: bytes, resent: Literal["no", "first", "more"] = "no") -> None:
        """One chunk of ``item_id``'s audio to the gateway, then the mark that follows its playout.
        ``resent``: the chunk is sent again after a move (``first``: the item's first such chunk)."""
        position = self.playout.sent
        await self.send_frame(Kind.AUDIO, audio=audio)
        now = self.clock.ms()
        mark = self.playout.on_audio_sent(item_id, len(audio), now)
        self._unplayed.append((position, item_id, audio))
        if resent == "first":
            self.turns.resent(item_id, mark)
        elif resent == "no" and (latency := self.turns.audio_sent(item_id, mark, now)) is not None:
            m.TURN_SECONDS.observe(latency)
        await self.send_frame(Kind.MARK, {"name": mark})
