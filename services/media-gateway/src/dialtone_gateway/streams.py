"""One Twilio Media Stream: the socket on one side, the call's two bus subjects on the other.

Inbound, each Twilio message is parsed at the edge (``twilio_protocol``) and caller audio goes to
``dt.v1.call.<id>.<key>.in`` as raw frames. Outbound, frames from ``...out`` become media, mark and
clear messages; agent audio is coalesced so that Twilio never gets a media message shorter than
``min_chunk_ms`` (tiny chunks stutter). A bad message is counted and logged with the call id, and
the socket carries on: one caller's garbage never ends their call, let alone another's.

The stream holds its call under a stream key recorded in the call record, and offers the call to
the bridges under that key. A bridge that holds the call sends a heartbeat frame every half second;
when nothing comes from it for ``bridge_lease_s`` the stream fences it off (a ``stop`` on the old
subject, then a new key, so the old bridge can no longer reach the caller) and re-offers the call.
The bridge that takes it restores the conversation from the call's events. If no bridge takes the
call within ``claim_deadline_s``, Twilio apologises to the caller and hangs up.

The recorder (in the transcript-writer) hears the call through this stream's tap: each frame
published on ``in`` and each one taken from ``out``, in the order seen here, in one ``.rec``
message a quarter of a second, rather than every 20 ms frame twice over the bus.

A draining gateway moves the calls it still holds (``move``): the record goes ``moving``, Twilio
gets new TwiML with a stream URL issued for the move, stops this stream, and opens the new one
through the load balancer at a gateway that is not draining. This stream then records where it
stopped instead of ending the call, and waits for the new one to take the call. The new stream
keeps the stream key, so the bridge keeps the call: it carries on the frame sequence and the
media clock (Twilio's timestamps restart at 0 on a new stream; the gap goes in between) and tells
the bridge with a ``MOVED`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from dialtone_common.callbook import CallBook, CallBookUnavailable
from dialtone_common.coalesce import Coalescer
from dialtone_common.logs import CallLog
from dialtone_common.metrics import TRANSIT_SAMPLE
from dialtone_proto import CallAnswer, CallOffer, CallRecord, subjects
from dialtone_proto.events import CallEnded, CallStatus, encode_event
from dialtone_proto.frames import (
    TAP_IN,
    TAP_OUT,
    TAP_VERSION,
    FrameError,
    Kind,
    decode_frame,
    encode_control,
    encode_frame,
    tap_entry,
    transit_ms,
)
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from dialtone_gateway import metrics as m
from dialtone_gateway import twilio_protocol as tp
from dialtone_gateway.line import TwilioLine
from dialtone_gateway.settings import GatewaySettings
from dialtone_gateway.twiml import connect_stream

log = logging.getLogger("dialtone.gateway.stream")

MULAW_SILENCE = 0xFF
BACKLOG_FRAMES = 3000  # 60 s of caller audio held while a bridge claims the call
FLUSH_AFTER_S = 0.06  # send a short tail of agent audio if nothing follows it
OUT_PENDING_MSGS = 5000  # frames from the bridge waiting for this stream (~100 s of audio)
TOUCH_EVERY_S = 1800.0  # rewrite the call record this often, so a long call outlives the bucket's TTL
TAP_EVERY_S = 0.25  # the recorder gets the call's frames in a batch this often
TAP_MAX_BYTES = 48 * 1024  # or sooner, when a burst of agent audio fills a batch
_TAP_HEAD = bytes([TAP_VERSION])


@dataclass
class StreamContext:
    """What every stream of this gateway shares."""

    nc: Client
    js: JetStreamContext
    calls: CallBook
    line: TwilioLine
    settings: GatewaySettings
    gateway_id: str
    move_url: Callable[[str, str], str] | None = None  # (call id, move id) -> a signed stream URL for the move
    bus: Coalescer | None = None  # every call's frames to its bridge, coalesced into few writes

    def __post_init__(self) -> None:
        if self.bus is None:
            self.bus = Coalescer(self.nc, on_error=lambda subject, exc: m.DROPPED_NATS_ERROR.inc())


class MediaStream:
    """Owns one socket's life: parse, claim, pump both ways, watch the bridge, tidy up."""

    def __init__(self, ws: WebSocket, ctx: StreamContext, record: CallRecord, *, moved: bool = False) -> None:
        """``moved``: ``record`` was just taken from a moving record (``claim_move``): this stream
        carries on a call another gateway held, for the bridge that holds it."""
        assert record.stream_key is not None
        self.ws, self.ctx, self.settings = ws, ctx, ctx.settings
        self.nc = ctx.nc
        assert ctx.bus is not None
        self.bus = ctx.bus
        self.record = record
        self.call_id = record.call_id
        self.key = record.stream_key
        self._in_subject = subjects.call_in(self.call_id, self.key)  # built once per key, not per frame
        self._keys = {record.stream_key}  # every key this stream held the call under
        self.epoch = record.epoch
        self.log: logging.LoggerAdapter = CallLog(log, call_id=self.call_id)
        self.stream_sid: str | None = None
        self._seq = 0
        self._claimed = False
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_FRAMES)
        self._out_sub: Subscription | None = None
        self._out_subject = ""
        self._claim_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._pending = bytearray()
        self._flush_task: asyncio.Task | None = None
        self._min_bytes = ctx.settings.min_chunk_ms * 8  # 8 kHz mu-law: 8 bytes a millisecond
        self._bad_logged = 0
        self._last_out = time.monotonic()
        self._rescued = False
        self._handoff = False  # the bridge asked for the call to go to another bridge
        self._offer_handoff = False  # the current offer is such a hand-off
        self._finished = False
        self._touched = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._moved_in = moved
        self._ts_offset = 0  # added to Twilio's timestamps: a moved call's clock goes on
        self._ts_end = 0  # end of the latest caller frame on the call's clock (ms)
        self._move_id: str | None = None  # this stream is moving the call under this id
        self.move_tried = False
        self._stopped = asyncio.Event()  # the socket's end was seen (for a move waiting on it)
        if moved:
            self._seq = record.moved_seq or 0
        # The recorder's tap (``_tap``): every frame published on ``in`` and taken from ``out``, in
        # the order this stream saw them, sent a few times a second on ``.rec``.
        self._tap: bytearray | None = bytearray(_TAP_HEAD) if ctx.settings.recordings_enabled else None
        self._tap_key = self.key
        self._tap_due: asyncio.TimerHandle | None = None

    # ---- inbound -------------------------------------------------------------------------
    async def run(self) -> None:
        m.STREAMS_ACTIVE.inc()
        m.STREAMS_TOTAL.inc()
        reason = "socket_closed"
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    self._bad("binary_frame", "binary WebSocket frame")
                    continue
                if len(data) > self.settings.max_message_bytes:
                    self._bad("oversize", f"message of {len(data)} bytes > {self.settings.max_message_bytes}")
                    continue
                try:
                    event = tp.parse(data)
                except tp.BadMessage as exc:
                    self._bad(exc.reason, str(exc))
                    continue
                if isinstance(event, tp.Stop):
                    m.MESSAGES_IN.labels("stop").inc()
                    reason = "stop"
                    break
                if not await self._handle(event):
                    reason = "refused"
                    break
        except WebSocketDisconnect:
            pass
        finally:
            await self._finish(reason)

    async def _handle(self, event: tp.Inbound) -> bool:
        """Act on one message; False when the stream must end (a start for another call)."""
        if isinstance(event, tp.Media):
            m.MEDIA_IN.inc()
            if self.stream_sid is None:
                self._bad("media_before_start", "media before start")
                return True
            ts = event.timestamp + self._ts_offset
            self._ts_end = ts + len(event.payload) // 8
            self._publish_in(encode_frame(Kind.AUDIO, self._next_seq(), ts, event.payload), audio=True)
        elif isinstance(event, tp.Mark):
            m.MESSAGES_IN.labels("mark").inc()
            if self.stream_sid is None:
                self._bad("mark_before_start", "mark before start")
                return True
            self._publish_in(encode_control(Kind.MARK, self._next_seq(), 0, {"name": event.name}))
        elif isinstance(event, tp.Dtmf):
            m.MESSAGES_IN.labels("dtmf").inc()
            if self.stream_sid is None:
                self._bad("dtmf_before_start", "dtmf before start")
                return True
            self._publish_in(encode_control(Kind.DTMF, self._next_seq(), 0, {"digit": event.digit}))
        elif isinstance(event, tp.Start):
            m.MESSAGES_IN.labels("start").inc()
            return await self._start(event)
        elif isinstance(event, tp.Connected):
            m.MESSAGES_IN.labels("connected").inc()
        return True

    async def _start(self, start: tp.Start) -> bool:
        if self.stream_sid is not None:
            self._bad("duplicate_start", "second start event")
            return True
        if start.call_sid != self.call_id:
            # The URL (signed, with the call's token) names one call; a start for another is an attack.
            m.SOCKETS_REFUSED.labels("foreign_call_sid").inc()
            self.log.warning("start names call %r, not the stream's own call: refused", start.call_sid[:64])
            return False
        self.stream_sid = start.stream_sid
        if start.custom_parameters:
            self.log.info("customParameters ignored: the call's details come from its signed webhook")
        if self._moved_in:
            await self._carry_on()
            return True
        # Subscribe before offering so the agent's first words (a greeting) cannot be missed.
        await self._subscribe_out()
        self._claim_task = asyncio.create_task(self._claim(), name=f"claim-{self.call_id}")
        return True

    # ---- moving the call to another gateway -----------------------------------------------
    async def _carry_on(self) -> None:
        """The call moved here: its bridge already listens under the stream key. Put the clock
        where the old stream stopped plus the gap, tell the bridge, and watch its lease."""
        r = self.record
        gap_s = max(0.0, time.time() - r.moved_at) if r.moved_at is not None else 0.0
        stopped_ts = r.moved_ts or 0
        self._ts_offset = self._ts_end = stopped_ts + round(gap_s * 50) * 20  # whole 20 ms frames
        m.MOVE_SECONDS.observe(gap_s)
        await self._subscribe_out()
        self._claimed = True
        self._last_out = time.monotonic()
        self._publish_in(encode_control(Kind.MOVED, self._next_seq(), self._ts_offset, {
            "from": r.moved_from, "to": self.ctx.gateway_id, "stopped_ts": stopped_ts, "gap_ms": round(gap_s * 1000),
        }))
        self._publish_event(CallStatus(
            id=f"{self.call_id}-moved-{self._seq}", call_id=self.call_id, at=datetime.now(UTC), status="moved",
            source="gateway", detail=f"{r.moved_from} -> {self.ctx.gateway_id}",
        ))
        self.log.info("call moved here from %s: %.0f ms without a stream", r.moved_from, gap_s * 1000)
        self._watch_task = asyncio.create_task(self._watch_bridge(), name=f"lease-{self.call_id}")

    async def move(self) -> bool:
        """Move the call to another gateway (this one is draining): True once Twilio left this
        stream for the new one. On failure the call stays here, and the session says why."""
        if self.move_tried or self._finished or not self._claimed or self.ctx.move_url is None:
            return False
        self.move_tried = True
        if self._moved_in and self.record.moved_from == self.ctx.gateway_id:
            # The balancer sent the moved call straight back here: there is no other gateway to
            # take it (one gateway, as in compose on one machine). It stays until the grace ends.
            return await self._move_failed(None, "came_back", "no other gateway: the call came back to this one")
        move_id = secrets.token_urlsafe(16)
        try:
            record = await self.ctx.calls.start_move(self.call_id, self.key, self.ctx.gateway_id, move_id)
        except CallBookUnavailable as exc:
            record, why = None, f"call store unavailable: {exc}"
        else:
            why = "the call record is no longer this stream's"
        if record is None or self._finished:
            return await self._move_failed(None, "record", why)
        self._move_id = move_id
        twiml = connect_stream(self.ctx.move_url(self.call_id, move_id))
        refused = await self.ctx.line.move(self.call_id, self.record.account_sid, twiml)
        if refused is not None:
            return await self._move_failed(move_id, "rest_failed", refused)
        try:
            async with asyncio.timeout(self.settings.move_wait_s):
                await self._stopped.wait()
        except TimeoutError:
            return await self._move_failed(
                move_id, "not_stopped", f"Twilio did not stop the old stream within {self.settings.move_wait_s:g} s"
            )
        return True

    async def cannot_move(self, why: str) -> None:
        """The call cannot move now (say, no other gateway is ready): the session says why."""
        await self._move_failed(None, "no_gateway", why)

    async def _move_failed(self, move_id: str | None, result: str, why: str) -> bool:
        """The move did not happen: this stream keeps the call (until the grace ends, as before)."""
        if move_id is not None and not self._stopped.is_set():
            self._move_id = None
            with contextlib.suppress(CallBookUnavailable):
                await self.ctx.calls.cancel_move(self.call_id, move_id)
        m.MOVES.labels(result).inc()
        self.log.warning("moving the call failed (%s): it stays on this gateway", why)
        self._publish_event(CallStatus(
            id=f"{self.call_id}-move-failed-{self._seq}", call_id=self.call_id, at=datetime.now(UTC),
            status="move_failed", source="gateway", detail=why[:500],
        ))
        return False

    async def _hand_over(self, move_id: str) -> bool:
        """Twilio stopped this stream for the move: record where it stopped, then wait for the new
        stream to take the call. False if none did within ``move_wait_s``."""
        try:
            await self.ctx.calls.move_stopped(self.call_id, move_id, self._seq, self._ts_end, time.time())
        except CallBookUnavailable as exc:
            self.log.error("could not record where the moving call stopped: %s", exc)
        deadline = time.monotonic() + self.settings.move_wait_s
        while time.monotonic() < deadline:
            try:
                record = await self.ctx.calls.get(self.call_id)
            except CallBookUnavailable:
                record = self.record
            if record is None:
                break  # the record is gone: nothing can carry the call on
            if (record.state, record.move_id) != ("moving", move_id):
                # Only the new stream's claim changes a record moving under our move id.
                m.MOVES.labels("moved").inc()
                self.log.info("call moved to %s", record.gateway_id)
                return True
            await asyncio.sleep(0.05)
        await self._move_failed(move_id, "no_new_stream",
                                f"no new stream took the call within {self.settings.move_wait_s:g} s")
        return False

    def _offer(self) -> CallOffer:
        r = self.record
        return CallOffer(
            call_id=self.call_id, stream_sid=self.stream_sid or "", stream_key=self.key, epoch=self.epoch,
            account_sid=r.account_sid, from_number=r.from_number, to_number=r.to_number,
            direction=r.direction, agent=r.agent, parameters=dict(r.variables), gateway_id=self.ctx.gateway_id,
            handoff=self._offer_handoff,
        )

    async def _subscribe_out(self) -> None:
        self._out_subject = subjects.call_out(self.call_id, self.key)
        self._out_sub = await self.nc.subscribe(
            self._out_subject, cb=self._on_out, pending_msgs_limit=OUT_PENDING_MSGS
        )

    async def _claim(self) -> None:
        try:
            await self._claim_once()
        except nats.errors.Error as exc:  # the bus failed under us: the caller must not sit in silence
            self.log.error("offering the call failed: %s", exc)
            await self._rescue("no_bridge" if self.epoch == 0 else "bridge_lost")

    async def _claim_once(self) -> None:
        started = time.monotonic()
        deadline = started + self.settings.claim_deadline_s
        payload = self._offer().model_dump_json().encode()
        # The bridge that opened this call's model session at the webhook gets the first offer; if
        # it does not take it, the call goes to the queue group as any other.
        prepared = self.record.prepared_by if self.epoch == 0 and self.record is not None else None
        # An offer to the queue group that nobody answered may have gone to a bridge that is frozen
        # (stopped, swapping) but still holds its place in the group: the next tries go to every
        # bridge at once, and the one that wins the call record answers.
        unanswered = False
        while True:
            subject = subjects.CALL_OFFER_ANY if unanswered else subjects.CALL_OFFER
            if prepared:
                with contextlib.suppress(subjects.InvalidCallId):
                    subject = subjects.bridge_offer(prepared)
                prepared = None
            try:
                reply = await self.nc.request(subject, payload, timeout=self.settings.claim_timeout_s)
                answer = CallAnswer.model_validate_json(reply.data)
                if answer.accepted:
                    break
                why = answer.reason or "refused"
            except nats.errors.NoRespondersError as exc:
                why = type(exc).__name__
            except nats.errors.TimeoutError as exc:
                why = type(exc).__name__
                unanswered = True
            except nats.errors.Error as exc:
                why = f"bus: {exc}"
            except ValueError as exc:
                why = f"bad answer: {exc}"
            if time.monotonic() >= deadline:
                m.CLAIMS.labels("failed").inc()
                self.log.error("no realtime-bridge took the call (epoch %d): %s", self.epoch, why)
                await self._rescue("no_bridge" if self.epoch == 0 else "bridge_lost")
                return
            m.CLAIMS.labels("retry").inc()
            await asyncio.sleep(0.2)
        m.CLAIMS.labels("claimed" if self.epoch == 0 else "reclaimed").inc()
        m.CLAIM_SECONDS.observe(time.monotonic() - started)
        self.log.info("call claimed by %s (agent %s, epoch %d)", answer.bridge_id, answer.agent, self.epoch)
        # Frames that arrive while the backlog drains join its end; the flag flips only once it is
        # empty, with no await in between, so the bridge sees every frame in order.
        while self._backlog:
            frame = self._backlog.popleft()
            self._send_in(frame)
            if frame[1] == Kind.AUDIO:
                m.FRAMES_TO_BRIDGE.inc()
        self._claimed = True
        self._last_out = time.monotonic()
        if not self._finished:
            self._watch_task = asyncio.create_task(self._watch_bridge(), name=f"lease-{self.call_id}")

    def _publish_in(self, frame: bytes, *, audio: bool = False) -> None:
        if not self._claimed:
            if len(self._backlog) == self._backlog.maxlen:
                self._bad("backlog_overflow", "caller audio dropped while waiting for a bridge")
            self._backlog.append(frame)
            return
        if not self.nc.is_connected:
            # Audio that cannot reach a bridge now is worthless later, and buffering it for every
            # call would fill the client's reconnect buffer: drop it, count it.
            m.DROPPED_NATS_DOWN.inc()
            return
        # Held for at most a millisecond, then published with every other call's frames in one
        # write (dialtone_common.coalesce); a refusal by NATS is counted there.
        self._send_in(frame)
        if audio:
            m.FRAMES_TO_BRIDGE.inc()

    def _send_in(self, frame: bytes, key: str | None = None) -> None:
        """One frame to the bridge on ``in`` (of ``key``, the current one unless said), and into the
        recorder's tap: everything on ``in`` is recorded, in the order published."""
        self.bus.publish(self._in_subject if key is None else subjects.call_in(self.call_id, key), frame)
        self._record(TAP_IN, frame, key)

    # ---- the recorder's tap ----------------------------------------------------------------
    def _record(self, side: int, frame: bytes, key: str | None = None) -> None:
        """Add a frame to the recorder's next batch (``dialtone_proto.frames`` "the recorder's tap")."""
        tap = self._tap
        if tap is None:
            return
        key = key or self.key
        if key != self._tap_key:
            self._send_tap()  # a batch holds the frames of one stream key
            self._tap_key = key
        tap += tap_entry(side, time.time_ns() // 1_000_000, frame)
        tap += frame
        if len(tap) >= TAP_MAX_BYTES:
            self._send_tap()
        elif self._tap_due is None:
            self._tap_due = asyncio.get_running_loop().call_later(TAP_EVERY_S, self._send_tap)

    def _send_tap(self) -> None:
        if self._tap_due is not None:
            self._tap_due.cancel()
            self._tap_due = None
        tap = self._tap
        if tap is None or len(tap) <= len(_TAP_HEAD):
            return
        data = bytes(tap)
        del tap[len(_TAP_HEAD):]
        self.bus.publish(subjects.call_rec(self.call_id, self._tap_key), data)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _bad(self, reason: str, detail: str) -> None:
        m.BAD_MESSAGES.labels(reason).inc()
        self._bad_logged += 1
        # A flood of garbage must not flood the log: the first ten, then one in a hundred.
        if self._bad_logged <= 10 or self._bad_logged % 100 == 0:
            self.log.warning("bad Twilio message (%s): %s [%d so far]", reason, detail[:200], self._bad_logged)

    # ---- the bridge's lease --------------------------------------------------------------
    async def _watch_bridge(self) -> None:
        """Re-offer the call when its bridge falls silent. A gap that is our own fault (this
        process stalled, or NATS is down and reconnecting) is never blamed on the bridge. The
        re-offer runs in this task, so the stream's end cancels it wherever it is."""
        lease = self.settings.bridge_lease_s
        tick = min(0.25, lease / 4)
        reconnects = self.nc.stats.get("reconnects", 0)
        expected = time.monotonic() + tick
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            stalled = now - expected > lease / 2
            expected = now + tick
            if stalled or not self.nc.is_connected or self.nc.stats.get("reconnects", 0) != reconnects:
                reconnects = self.nc.stats.get("reconnects", 0)
                self._last_out = now
                continue
            if self._move_id is not None:  # the call is moving: the new stream's gateway watches the bridge
                self._last_out = now
                continue
            if self._handoff or now - self._last_out > lease:
                break
            if now - self._touched > TOUCH_EVERY_S:
                self._touched = now
                with contextlib.suppress(CallBookUnavailable):
                    await self.ctx.calls.touch(self.call_id, self.key)
        await self._reoffer(now - self._last_out)

    async def _reoffer(self, silent_s: float) -> None:
        handoff, self._handoff = self._handoff, False
        self._offer_handoff = handoff
        if handoff:
            m.HANDOFFS.inc()
            status = "handed_off"
        else:
            m.BRIDGE_LOST.inc()
            status = "bridge_lost"
            self.log.warning("bridge silent for %.1f s: re-offering the call", silent_s)
        self._publish_event(CallStatus(
            id=f"{self.call_id}-{status.replace('_', '-')}-{self.epoch}", call_id=self.call_id, at=datetime.now(UTC),
            status=status, source="gateway",
        ))
        old_key, new_key = self.key, secrets.token_urlsafe(16)
        self._claimed = False
        # From here on nothing of the old bridge reaches the caller, also while the record is
        # re-keyed: its late frames, and what of its audio was held back for coalescing.
        self._out_subject = ""
        self._pending.clear()
        # Fence the old bridge off: should it still be alive, it hears the call is no longer its own.
        self._send_in(encode_control(Kind.STOP, self._next_seq(), 0, {"reason": "bridge_replaced"}), old_key)
        self._send_tap()
        await self.bus.flush()  # out before the new offer
        self._keys.add(new_key)
        deadline = time.monotonic() + self.settings.claim_deadline_s
        record = None
        while record is None:
            try:
                record = await self.ctx.calls.rekey(
                    self.call_id, old_key, new_key, self.epoch + 1, self.ctx.gateway_id
                )
                if record is None:
                    break  # the record is gone or no longer ours: nobody can take the call over
            except CallBookUnavailable as exc:
                if time.monotonic() > deadline:
                    break
                self.log.warning("could not re-key the call record (%s); retrying", exc)
                await asyncio.sleep(0.2)
        if record is None or self._finished:
            if not self._finished:
                await self._rescue("bridge_lost")
            return
        self.record, self.key, self.epoch = record, new_key, self.epoch + 1
        self._in_subject = subjects.call_in(self.call_id, self.key)
        old_sub, self._out_sub = self._out_sub, None
        if old_sub is not None:
            with contextlib.suppress(Exception):
                await old_sub.unsubscribe()
        try:
            await self._subscribe_out()
        except nats.errors.Error as exc:
            self.log.error("could not listen for the new bridge: %s", exc)
            await self._rescue("bridge_lost")
            return
        if not self._finished:
            self._claim_task = asyncio.create_task(self._claim(), name=f"reclaim-{self.call_id}")

    @property
    def handing_over(self) -> bool:
        """Twilio left this stream for the move's new one: the call is no longer this stream's."""
        return self._move_id is not None and self._stopped.is_set()

    async def leave(self, reason: str) -> None:
        """This gateway is going away with the call still on: Twilio apologises and hangs up."""
        if not self.handing_over:
            await self._rescue(reason)

    async def _rescue(self, reason: str) -> None:
        """No bridge: Twilio says sorry and hangs up (the stream's ``stop`` then ends it here)."""
        if self._rescued:
            return
        self._rescued = True
        m.RESCUES.inc()
        self._publish_event(CallEnded(
            id=f"{self.call_id}-gateway-ended", call_id=self.call_id, at=datetime.now(UTC), reason=reason,
        ))
        if await self.ctx.line.apologise(self.call_id, self.record.account_sid):
            self.log.warning("no bridge for the call (%s): Twilio apologises and hangs up", reason)
        else:
            self.log.error("no bridge for the call (%s) and no Twilio REST: closing the stream", reason)
            await self._close(1011)

    def _publish_event(self, event: CallStatus | CallEnded) -> None:
        async def publish() -> None:
            for _ in range(10):
                try:
                    await self.ctx.js.publish(
                        event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id}, timeout=2
                    )
                    return
                except Exception as exc:  # the bus is down: retry with the same id (deduplicated)
                    self.log.warning("could not record %s: %s", event.type, exc)
                    await asyncio.sleep(0.5)

        task = asyncio.create_task(publish(), name=f"event-{event.id}")
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    # ---- outbound ------------------------------------------------------------------------
    async def _on_out(self, msg: Msg) -> None:
        if msg.subject != self._out_subject:
            return  # a frame of a fenced-off bridge, still in flight
        self._last_out = time.monotonic()
        try:
            frame = decode_frame(msg.data)
            if (frame.kind is not Kind.AUDIO or frame.seq % TRANSIT_SAMPLE == 0) and (ms := transit_ms(frame)) is not None:
                m.BUS_TRANSIT.observe(ms / 1000)
            if frame.kind is not Kind.HEARTBEAT:
                self._record(TAP_OUT, msg.data)
            if frame.kind is Kind.AUDIO:
                m.FRAMES_FROM_BRIDGE.inc()
                self._pending += frame.payload
                if len(self._pending) >= self._min_bytes:
                    await self._flush(pad=False)
                elif self._flush_task is None:
                    self._flush_task = asyncio.create_task(self._flush_later(), name=f"flush-{self.call_id}")
            elif frame.kind is Kind.MARK:
                await self._flush(pad=True)
                await self._send(tp.mark(self.stream_sid or "", str(frame.json()["name"])), "mark")
            elif frame.kind is Kind.CLEAR:
                self._pending.clear()
                await self._send(tp.clear(self.stream_sid or ""), "clear")
            elif frame.kind is Kind.HANGUP:
                await self._flush(pad=True)
                self.log.info("bridge ended the stream: %s", frame.json().get("reason"))
                await self._close(1000)
            elif frame.kind is Kind.HEARTBEAT:
                pass
            elif frame.kind is Kind.HANDOFF:
                self.log.info("bridge %s is draining: it hands the call over", frame.json().get("bridge"))
                self._handoff = True  # the lease watch re-offers the call at its next tick
            else:
                raise FrameError(f"{frame.kind.name} is not an outbound kind")
        except (FrameError, KeyError) as exc:
            m.BAD_FRAMES.inc()
            self.log.warning("bad frame from the bus: %s", exc)

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_AFTER_S)
        self._flush_task = None
        await self._flush(pad=True)

    async def _flush(self, *, pad: bool) -> None:
        if self._flush_task is not None and self._flush_task is not asyncio.current_task():
            self._flush_task.cancel()
        self._flush_task = None
        if not self._pending:
            return
        if pad and len(self._pending) < self._min_bytes:
            # A short tail is padded with silence: it is the end of an utterance, and a message under
            # ~40 ms stutters on Twilio's side.
            self._pending += bytes([MULAW_SILENCE]) * (self._min_bytes - len(self._pending))
        elif len(self._pending) < self._min_bytes:
            return
        payload, self._pending = bytes(self._pending), bytearray()
        m.AUDIO_OUT_BYTES.inc(len(payload))
        await self._send(tp.media(self.stream_sid or "", payload), "media")

    async def _send(self, text: str, event: str) -> None:
        if self.ws.application_state is not WebSocketState.CONNECTED:
            return
        try:
            async with self._send_lock:
                await self.ws.send_text(text)
            m.SENT[event].inc()
        except (RuntimeError, ConnectionError, WebSocketDisconnect) as exc:
            self.log.info("could not send %s to Twilio: %s", event, exc)

    async def _close(self, code: int) -> None:
        with contextlib.suppress(RuntimeError, ConnectionError, WebSocketDisconnect):
            if self.ws.application_state is WebSocketState.CONNECTED:
                await self.ws.close(code)

    # ---- end -----------------------------------------------------------------------------
    async def _finish(self, reason: str) -> None:
        self._finished = True
        self._stopped.set()
        m.STREAMS_ACTIVE.dec()
        if self._flush_task is not None:
            self._flush_task.cancel()
        for _ in range(2):  # a re-offer being cancelled may just have started a claim, and vice versa
            for task in (self._watch_task, self._claim_task):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        self._send_tap()  # what the caller heard until now reaches the recorder before anything else
        if (move_id := self._move_id) is not None and reason != "refused":
            if await self._hand_over(move_id):  # the call goes on at the new stream: leave it be
                await self._leave_moved()
                return
            reason = "move_failed"
            await self._rescue(reason)  # Twilio left this stream but nothing took the call: free the line
        if self.stream_sid is not None:
            self._claimed = True  # publish the stop even if nobody claimed: a late bridge must end too
            self._send_in(encode_control(Kind.STOP, self._next_seq(), 0, {"reason": reason}))
            self._send_tap()
            await self.bus.flush()
            self.log.info("stream ended (%s)", reason)
        with contextlib.suppress(Exception):
            await self.ctx.calls.end(self.call_id, self._keys)
        if self._out_sub is not None:
            with contextlib.suppress(Exception):
                await self._out_sub.unsubscribe()
        await self._close(1000 if reason != "refused" else 1008)

    async def _leave_moved(self) -> None:
        self.log.info("stream ended: the call moved")
        if self._out_sub is not None:
            with contextlib.suppress(Exception):
                await self._out_sub.unsubscribe()
        await self._close(1000)


_BACKGROUND: set[asyncio.Task] = set()  # event publishes that outlive their stream's teardown
