"""One Twilio Media Stream: the socket on one side, the call's two bus subjects on the other.

Inbound, each Twilio message is parsed at the edge (``twilio_protocol``) and caller audio goes to
``dt.v1.call.<id>.in`` as raw frames. Outbound, frames from ``dt.v1.call.<id>.out`` become media,
mark and clear messages; agent audio is coalesced so that Twilio never gets a media message shorter
than ``min_chunk_ms`` (tiny chunks stutter). A bad message is counted and logged with the call id,
and the socket carries on: one caller's garbage never ends their call, let alone another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import nats.errors
from dialtone_common.logs import CallLog
from dialtone_proto import CallAnswer, CallOffer, subjects
from dialtone_proto.frames import FrameError, Kind, decode_frame, encode_control, encode_frame
from nats.aio.client import Client
from nats.aio.msg import Msg
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from dialtone_gateway import metrics as m
from dialtone_gateway import twilio_protocol as tp
from dialtone_gateway.settings import GatewaySettings

log = logging.getLogger("dialtone.gateway.stream")

MULAW_SILENCE = 0xFF
BACKLOG_FRAMES = 3000  # 60 s of caller audio held while a bridge claims the call
FLUSH_AFTER_S = 0.06  # send a short tail of agent audio if nothing follows it


class MediaStream:
    """Owns one socket's life: parse, claim, pump both ways, tidy up."""

    def __init__(self, ws: WebSocket, nc: Client, settings: GatewaySettings, gateway_id: str) -> None:
        self.ws, self.nc, self.settings, self.gateway_id = ws, nc, settings, gateway_id
        self.log: logging.LoggerAdapter = CallLog(log, call_id="-")
        self.call_id: str | None = None
        self.stream_sid: str | None = None
        self._seq = 0
        self._claimed = False
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_FRAMES)
        self._out_sub = None
        self._claim_task: asyncio.Task | None = None
        self._pending = bytearray()
        self._flush_task: asyncio.Task | None = None
        self._min_bytes = settings.min_chunk_ms * 8
        self._bad_logged = 0
        self._stopped = False
        self._send_lock = asyncio.Lock()

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
                await self._handle(event)
        except WebSocketDisconnect:
            pass
        finally:
            await self._finish(reason)

    async def _handle(self, event: tp.Inbound) -> None:
        if isinstance(event, tp.Media):
            m.MESSAGES_IN.labels("media").inc()
            if self.call_id is None:
                self._bad("media_before_start", "media before start")
                return
            await self._publish_in(encode_frame(Kind.AUDIO, self._next_seq(), event.timestamp, event.payload))
        elif isinstance(event, tp.Mark):
            m.MESSAGES_IN.labels("mark").inc()
            if self.call_id is None:
                self._bad("mark_before_start", "mark before start")
                return
            await self._publish_in(encode_control(Kind.MARK, self._next_seq(), 0, {"name": event.name}))
        elif isinstance(event, tp.Dtmf):
            m.MESSAGES_IN.labels("dtmf").inc()
            if self.call_id is None:
                self._bad("dtmf_before_start", "dtmf before start")
                return
            await self._publish_in(encode_control(Kind.DTMF, self._next_seq(), 0, {"digit": event.digit}))
        elif isinstance(event, tp.Start):
            m.MESSAGES_IN.labels("start").inc()
            await self._start(event)
        elif isinstance(event, tp.Connected):
            m.MESSAGES_IN.labels("connected").inc()

    async def _start(self, start: tp.Start) -> None:
        if self.call_id is not None:
            self._bad("duplicate_start", "second start event")
            return
        try:
            subjects.check_call_id(start.call_sid)
        except subjects.InvalidCallId:
            self._bad("bad_call_sid", f"callSid {start.call_sid[:80]!r} is not usable")
            return
        self.call_id, self.stream_sid = start.call_sid, start.stream_sid
        self.log = CallLog(log, call_id=self.call_id)
        params = start.custom_parameters
        variables = {k[2:]: v for k, v in params.items() if k.startswith("v_")}
        offer = CallOffer(
            call_id=self.call_id,
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            from_number=params.get("from"),
            to_number=params.get("to"),
            direction="outbound" if params.get("direction", "").startswith("outbound") else "inbound",
            agent=params.get("agent") or self.settings.default_agent,
            parameters=variables | ({"answered_by": params["answered_by"]} if params.get("answered_by") else {}),
            gateway_id=self.gateway_id,
        )
        # Subscribe before offering so the agent's first words (a greeting) cannot be missed.
        self._out_sub = await self.nc.subscribe(subjects.call_out(self.call_id), cb=self._on_out)
        self._claim_task = asyncio.create_task(self._claim(offer), name=f"claim-{self.call_id}")

    async def _claim(self, offer: CallOffer) -> None:
        started = time.monotonic()
        deadline = started + self.settings.claim_deadline_s
        payload = offer.model_dump_json().encode()
        while True:
            try:
                reply = await self.nc.request(subjects.CALL_OFFER, payload, timeout=self.settings.claim_timeout_s)
                answer = CallAnswer.model_validate_json(reply.data)
                if answer.accepted:
                    break
                why = answer.reason or "refused"
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                why = type(exc).__name__
            except ValueError as exc:
                why = f"bad answer: {exc}"
            if time.monotonic() >= deadline:
                m.CLAIMS.labels("failed").inc()
                self.log.error("no realtime-bridge claimed the call: %s", why)
                await self._close(1011)
                return
            m.CLAIMS.labels("retry").inc()
            await asyncio.sleep(0.2)
        m.CLAIMS.labels("claimed").inc()
        m.CLAIM_SECONDS.observe(time.monotonic() - started)
        self.log.info("call claimed by %s (agent %s)", answer.bridge_id, answer.agent)
        # Frames that arrive while the backlog drains join its end; the flag flips only once it is
        # empty, with no await in between, so the bridge sees every frame in order.
        while self._backlog:
            await self.nc.publish(subjects.call_in(self.call_id), self._backlog.popleft())
        self._claimed = True

    async def _publish_in(self, frame: bytes) -> None:
        if not self._claimed:
            if len(self._backlog) == self._backlog.maxlen:
                self._bad("backlog_overflow", "caller audio dropped while waiting for a bridge")
            self._backlog.append(frame)
            return
        # nats-py's publish appends to the outgoing buffer; it waits only when that buffer is full.
        await self.nc.publish(subjects.call_in(self.call_id), frame)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _bad(self, reason: str, detail: str) -> None:
        m.BAD_MESSAGES.labels(reason).inc()
        self._bad_logged += 1
        # A flood of garbage must not flood the log: the first ten, then one in a hundred.
        if self._bad_logged <= 10 or self._bad_logged % 100 == 0:
            self.log.warning("bad Twilio message (%s): %s [%d so far]", reason, detail[:200], self._bad_logged)

    # ---- outbound ------------------------------------------------------------------------
    async def _on_out(self, msg: Msg) -> None:
        try:
            frame = decode_frame(msg.data)
            if frame.kind is Kind.AUDIO:
                self._pending += frame.payload
                if len(self._pending) >= self._min_bytes:
                    await self._flush(pad=False)
                elif self._flush_task is None:
                    self._flush_task = asyncio.create_task(self._flush_later(), name=f"flush-{self.call_id}")
            elif frame.kind is Kind.MARK:
                await self._flush(pad=True)
                await self._send(tp.mark(self.stream_sid, str(frame.json()["name"])), "mark")
            elif frame.kind is Kind.CLEAR:
                self._pending.clear()
                await self._send(tp.clear(self.stream_sid), "clear")
            elif frame.kind is Kind.HANGUP:
                await self._flush(pad=True)
                self.log.info("bridge ended the stream: %s", frame.json().get("reason"))
                await self._close(1000)
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
        await self._send(tp.media(self.stream_sid, payload), "media")

    async def _send(self, text: str, event: str) -> None:
        if self.ws.application_state is not WebSocketState.CONNECTED:
            return
        try:
            async with self._send_lock:
                await self.ws.send_text(text)
            m.MESSAGES_OUT.labels(event).inc()
        except (RuntimeError, ConnectionError, WebSocketDisconnect) as exc:
            self.log.info("could not send %s to Twilio: %s", event, exc)

    async def _close(self, code: int) -> None:
        with contextlib.suppress(RuntimeError, ConnectionError):
            if self.ws.application_state is WebSocketState.CONNECTED:
                await self.ws.close(code)

    # ---- end -----------------------------------------------------------------------------
    async def _finish(self, reason: str) -> None:
        m.STREAMS_ACTIVE.dec()
        if self._flush_task is not None:
            self._flush_task.cancel()
        if self._claim_task is not None and not self._claim_task.done():
            self._claim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claim_task
        if self.call_id is not None:
            with contextlib.suppress(Exception):
                if not self._claimed:
                    self._claimed = True  # publish the stop even if nobody claimed: a late bridge must end too
                await self.nc.publish(
                    subjects.call_in(self.call_id), encode_control(Kind.STOP, self._next_seq(), 0, {"reason": reason})
                )
            self.log.info("stream ended (%s)", reason)
        if self._out_sub is not None:
            with contextlib.suppress(Exception):
                await self._out_sub.unsubscribe()
        await self._close(1000)
