"""A simulated caller on Twilio's side of Dialtone's media-gateway.

:func:`dial` does what Twilio does for an inbound call: POST the signed voice webhook, read the
TwiML, open the signed Media Streams WebSocket, send ``connected`` and ``start``, then stream
``media`` every 20 ms (speech when the caller talks, silence otherwise) while playing the agent's
audio out in real time, echoing marks and honouring ``clear``.

The network between Twilio and the gateway is not kind: ``one_way_delay_ms`` delays every message,
``jitter_ms`` adds a random extra delay to each (a late message holds back the ones behind it, as
TCP keeps order, so they arrive together), and ``burst_ms`` releases messages only at the end of
each such period, in bursts. Both directions suffer alike.

Twilio ends the stream itself when its REST API ends or redirects the call: the
:class:`~dialtone_sim.twilio_api.FakeTwilioApi` finds the open call by CallSid (:func:`open_call`)
and the call sends ``stop`` and closes the socket (:meth:`SimCall.stopped_by_twilio`). When the new
TwiML is another ``<Connect><Stream>`` (a gateway moving the call), the call carries on as Twilio
does (:meth:`SimCall.moved_by_twilio`): ``stop`` on the old stream, the agent audio still queued
there dropped, then after ``move_delay_s`` a new stream (new streamSid, timestamps from 0) opens to
the new URL through the same ``base_url`` (a load balancer), and ``connected``, ``start`` and media
follow. The caller's clock runs on through the gap; no frame is sent during it, and the caller's
speech waits for the new stream (each gap is in :attr:`SimCall.moves`).

What real Twilio would warn about (wrong streamSid, bad JSON, unknown fields, audio too short to
play smoothly) is kept in ``protocol_errors`` and judged by :mod:`dialtone_sim.verdicts`.

Exceptions::

    Exception
     +-- WebhookRejected   the voice webhook answered non-200
     +-- StreamRejected    the WebSocket upgrade was refused (or closed during the handshake)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import random
import secrets
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import verdicts
from .audio import FRAME_BYTES, SILENCE_BYTE, tag_frame
from .playout import Playout
from .speech import synthesize

__all__ = ["Network", "SimCall", "StreamRejected", "WebhookRejected", "dial", "open_call", "place_scripted_call"]

_FRAME_S = 0.02
_SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES
# What a gateway may send (PROTOCOLS.md 1.3); anything else is a Twilio warning 31950/31951.
_ALLOWED = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


class WebhookRejected(Exception):
    """The gateway's voice webhook answered with a non-200 status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"voice webhook answered HTTP {status}")
        self.status = status


class StreamRejected(Exception):
    """The Media Streams WebSocket was refused (HTTP status) or closed at once (close code)."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"media stream rejected ({status})")
        self.status = status


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class Network:
    """How one direction of the wire treats messages (all times in ms).

    Args:
        delay_ms: fixed one-way delay.
        jitter_ms: each message is delayed by a further random 0..``jitter_ms``; order is kept,
            so a late message holds back the ones after it and they arrive in a bunch.
        burst_ms: messages are released only at multiples of this period, in bursts.
        seed: the jitter's random seed (runs are reproducible).
    """

    def __init__(self, delay_ms: float = 0, jitter_ms: float = 0, burst_ms: float = 0, seed: int = 0) -> None:
        self.delay_s, self.jitter_s, self.burst_s = delay_ms / 1000, jitter_ms / 1000, burst_ms / 1000
        self._rng = random.Random(seed)
        self._last_due = 0.0
        self._epoch = time.monotonic()

    @property
    def worst_s(self) -> float:
        """The longest a message can take."""
        return self.delay_s + self.jitter_s + self.burst_s

    def due(self, now: float) -> float:
        """When a message put in at ``now`` comes out (never before the one put in before it)."""
        due = now + self.delay_s + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)
        if self.burst_s:
            due = self._epoch + math.ceil((due - self._epoch) / self.burst_s) * self.burst_s
        self._last_due = max(self._last_due, due)
        return self._last_due


class _DelayLine:
    """FIFO that hands each item on when its :class:`Network` says: one direction of the wire."""

    def __init__(self, network: Network, deliver: Callable[[Any], Awaitable[None]]) -> None:
        self.network = network
        self.delay_s = network.worst_s
        self._deliver = deliver
        self._queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.pending = 0  # put but not yet delivered

    def put(self, item: Any) -> None:
        self.pending += 1
        self._queue.put_nowait((self.network.due(time.monotonic()), item))

    async def run(self) -> None:
        while True:
            due, item = await self._queue.get()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            try:
                await self._deliver(item)
            finally:
                self.pending -= 1


@dataclass
class Move:
    """One move of the call to a new stream (times are monotonic seconds).

    Attributes:
        stopped_at: when the old stream's ``stop`` left.
        started_at: when the new stream's first media frame left.
        stop_frame: the caller's 20 ms frame (counted from the call's start) the old stream did not send.
        resume_frame: the first frame the new stream sent; frames in between were never sent.
        sent_before: bytes of :attr:`SimCall.sent_audio` sent before the move.
        heard_before: bytes of agent audio heard before the move.
    """

    stopped_at: float
    stop_frame: int
    sent_before: int
    heard_before: int
    started_at: float = 0.0
    resume_frame: int = 0

    @property
    def gap_s(self) -> float:
        """The caller's gap: from the old stream's last frame to the new one's first."""
        return (self.resume_frame - self.stop_frame) * _FRAME_S


class SimCall:
    """One simulated phone call; create it with :func:`dial`.

    Attributes:
        heard: agent audio actually played out to the caller, in order.
        played: ``(frame, bytes)``: the agent audio played in each 20 ms frame of the caller's clock
            (:attr:`frame_no`), where a recording must have it.
        sent_audio: every inbound media frame sent (speech and silence).
        media_received: ``(monotonic arrival, payload bytes)`` of each outbound media message.
        marks_echoed: mark names echoed back to the gateway, in order.
        clears: ``(monotonic time, len(heard))`` when each ``clear`` took effect.
        protocol_errors: what real Twilio would warn about (wrong streamSid, bad JSON, ...).
        ended_by: who ended the stream: ``caller`` (:meth:`hangup`), ``gateway`` (it closed
            the socket) or ``twilio`` (a REST update ended or redirected the call).
        moves: each move to a new stream (:meth:`moved_by_twilio`).
        move_failures: why a new stream could not be opened (the call then ended).
        frame_no: the caller's clock, in 20 ms frames since the call's first stream started.
        tag: the number the caller's silence carries (:func:`dial`), or None.
    """

    def __init__(self, ws: ClientConnection, *, account_sid: str, call_sid: str,
                 custom_parameters: dict[str, str], inbound: Network, outbound: Network,
                 from_: str = "", to: str = "") -> None:  # fmt: skip
        self.account_sid, self.call_sid = account_sid, call_sid
        self.from_, self.to = from_, to
        self.tag: int | None = None
        self.stream_sid = _sid("MZ")
        self.custom_parameters = custom_parameters
        self.sent_audio = bytearray()
        self.sent_times: list[float] = []  # monotonic send time of each 20 ms frame (for latency figures)
        self.media_received: list[tuple[float, int]] = []
        self.marks_echoed: list[str] = []
        self.clears: list[tuple[float, int]] = []
        self.messages_sent: list[dict] = []
        self.messages_received: list[dict] = []
        self.protocol_errors: list[str] = []
        self._errors: list[str] = []
        self.ended_by: str | None = None
        self.closed_by_server = False
        self.close_code: int | None = None
        self._ws = ws
        self._seq = 0
        self._chunk = 0
        self._speech = bytearray()
        self._speech_sent = 0
        self._speech_queued = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._playout = Playout(self._echo_mark)
        self._last_arrival = 0.0
        self._closed = asyncio.Event()
        self._hanging_up = False
        self._finishing = False
        self._outbound = _DelayLine(outbound, self._send_now)
        self._inbound = _DelayLine(inbound, self._receive_now)
        self._tasks: list[asyncio.Task] = []
        self.moves: list[Move] = []
        self.played: list[tuple[int, bytes]] = []
        self._clock_start = 0.0
        self.move_failures: list[str] = []
        self.frame_no = 0
        self._stream_frame0 = 0  # the caller's frame at which the current stream started
        self._between_streams = False
        self._old_sids: set[str] = set()
        self._move_lock = asyncio.Lock()
        self.base_url, self.auth_token, self.move_delay_s = "", "", 0.4  # set by dial
        verdicts.register(self)

    def sim_errors(self) -> list[str]:
        """Every protocol error so far, naming the call."""
        return self._errors

    def protocol_error(self, message: str) -> None:
        """Something real Twilio would warn about (31950/31951) or that would sound wrong."""
        self.protocol_errors.append(message)
        self._errors.append(f"twilio call {self.call_sid}: {message}")

    @property
    def heard(self) -> bytearray:
        return self._playout.heard

    # ---- lifecycle ------------------------------------------------------------------------
    async def _open(self) -> None:
        """Send ``connected`` and ``start`` and begin streaming (called by :func:`dial`)."""
        await self._send_start()
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(c)
            for c in (self._read(), self._clock(), self._outbound.run(), self._inbound.run())
        ]
        _open_calls[self.call_sid] = self

    async def _send_start(self) -> None:
        await self._send_now({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send_now(self._stamp({"event": "start", "start": {
            "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": self.custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }}))  # fmt: skip

    async def _finish(self, *, by_server: bool) -> None:
        if self._finishing:  # both ends hung up at once: the first one does the work
            await self._closed.wait()
            return
        self._finishing = True
        _open_calls.pop(self.call_sid, None)
        self.closed_by_server = by_server and not self._hanging_up
        if self.ended_by is None:
            self.ended_by = "gateway" if self.closed_by_server else "caller"
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._ws.close()
        self.close_code = self._ws.close_code
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("call ended"))
        self._closed.set()

    async def hangup(self) -> None:
        """Send ``stop`` (after any queued messages) and close the socket."""
        if self._closed.is_set():
            return
        if self._hanging_up:  # already on its way (Twilio ended the call): wait for the end
            with contextlib.suppress(TimeoutError):
                await self.wait_closed(10 + self._outbound.delay_s)
            return
        self._hanging_up = True
        self._outbound.put(
            self._stamp({"event": "stop", "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        )
        # Wait for the queued messages to leave (or for the server to end the call first).
        with contextlib.suppress(TimeoutError):
            await self._poll_until(
                lambda: self._outbound.pending == 0 or self._closed.is_set(), 5 + self._outbound.delay_s
            )
        await self._finish(by_server=False)

    def stopped_by_twilio(self) -> None:
        """Twilio's REST API ended or redirected the call: send ``stop`` and close the stream, as
        Twilio does (after the messages already on their way)."""
        self._loop.call_soon_threadsafe(self._stop_from_twilio)  # the REST API may run on another loop

    def _stop_from_twilio(self) -> None:
        if self._closed.is_set() or self._hanging_up:
            return
        self.ended_by = "twilio"
        self._tasks.append(self._loop.create_task(self.hangup()))

    def moved_by_twilio(self, stream_url: str) -> None:
        """Twilio's REST API gave the call new TwiML with another ``<Connect><Stream>``: the old
        stream stops and a new one opens to ``stream_url``, as Twilio does."""
        self._loop.call_soon_threadsafe(self._move_from_twilio, stream_url)

    def _move_from_twilio(self, stream_url: str) -> None:
        if self._closed.is_set() or self._hanging_up:
            return
        self._tasks.append(self._loop.create_task(self._move(stream_url)))

    async def _move(self, stream_url: str) -> None:
        async with self._move_lock:  # a second update while the first is under way: after it
            if not (self._closed.is_set() or self._hanging_up):
                await self._move_now(stream_url)

    async def _move_now(self, stream_url: str) -> None:
        self._between_streams = True  # Twilio sends no media after the stop
        move = Move(time.monotonic(), self.frame_no, len(self.sent_audio), len(self.heard))
        self._outbound.put(
            self._stamp({"event": "stop", "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        )
        with contextlib.suppress(TimeoutError):
            await self._poll_until(lambda: self._outbound.pending == 0, 5 + self._outbound.delay_s)
        self._playout.discard()  # the old stream's buffer is gone, and its marks with it
        self._old_sids.add(self.stream_sid)
        await self._ws.close()
        await asyncio.sleep(self.move_delay_s)
        headers = {"X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(stream_url, {})}
        try:
            ws = await connect(_ws_url(stream_url, self.base_url), additional_headers=headers, ping_interval=None)
        except (InvalidStatus, OSError, ConnectionClosed) as exc:
            # Nothing follows the <Connect>: Twilio ends the call.
            self.move_failures.append(f"{type(exc).__name__}: {exc}")
            self.ended_by, self._hanging_up = "twilio", True
            await self._finish(by_server=False)
            return
        self._ws, self.stream_sid, self._seq, self._chunk = ws, _sid("MZ"), 0, 0
        try:
            await self._send_start()
        except ConnectionClosed as exc:
            self.move_failures.append(f"new stream closed at once ({exc})")
            self.ended_by, self._hanging_up = "twilio", True
            await self._finish(by_server=True)
            return
        self._stream_frame0 = move.resume_frame = self.frame_no
        move.started_at = time.monotonic()
        self.moves.append(move)
        self._tasks.append(self._loop.create_task(self._read()))
        self._between_streams = False

    async def wait_closed(self, timeout: float = 30) -> None:  # noqa: ASYNC109 - part of the test API
        """Wait until the call has ended (either side)."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def __aenter__(self) -> SimCall:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.hangup()

    # ---- the caller's actions -------------------------------------------------------------
    async def say(self, speech: str | bytes) -> None:
        """Queue speech (text is synthesized) and return once all of it has been sent."""
        audio = synthesize(speech, seed=len(self.sent_audio)) if isinstance(speech, str) else speech
        if self._closed.is_set():
            raise ConnectionError("call ended")
        if self.tag is not None and len(self.sent_audio) < 3 * FRAME_BYTES:
            # A tagged call's model session learns its script from the tag in the caller's
            # silence: a caller who speaks at once says it first (60 ms of silence).
            audio = b"".join(tag_frame(self.tag, n) for n in range(3)) + audio
        self._speech += audio
        self._speech_queued += len(audio)
        done = asyncio.get_running_loop().create_future()
        self._waiters.append((self._speech_queued, done))
        await done

    async def press(self, digit: str) -> None:
        """Send a DTMF keypress, as Twilio does with bidirectional streams."""
        self._outbound.put(self._stamp({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}}))

    def heard_by(self, when: float) -> int:
        """How many bytes of agent audio the caller had heard by ``when`` (``time.monotonic()``), on
        the call's media clock: a frame is heard at its 20 ms tick, even when a stalled test process
        plays it late in a catch-up burst."""
        due = int((when - self._clock_start) / _FRAME_S)
        return sum(len(audio) for frame_no, audio in self.played if frame_no <= due)

    async def wait_heard(self, ms: float, timeout: float = 30) -> None:  # noqa: ASYNC109 - part of the test API
        """Wait until at least ``ms`` of agent audio has been played out."""
        await self._poll(lambda: len(self.heard) >= ms * 8, timeout)

    async def wait_quiet(self, quiet_ms: float = 800, timeout: float = 30, since: int | None = None) -> None:  # noqa: ASYNC109
        """Wait for a reply to finish: new agent audio arrived, played out, then ``quiet_ms`` of nothing.

        Args:
            since: count of ``media_received`` entries that do not count as new (default: now).
        """
        start = len(self.media_received) if since is None else since

        def quiet() -> bool:
            return (
                len(self.media_received) > start
                and self._playout.buffered == 0
                and time.monotonic() - self._last_arrival >= quiet_ms / 1000
            )

        await self._poll(quiet, timeout)

    @staticmethod
    async def _poll_until(condition: Callable[[], bool], limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while not condition():  # noqa: ASYNC110 - a few 5 ms polls at hang-up only
                await asyncio.sleep(0.005)

    async def _poll(self, condition: Callable[[], bool], limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while not condition():  # noqa: ASYNC110 - the state changes on a 20 ms clock anyway
                if self._closed.is_set():
                    raise ConnectionError("call ended")
                await asyncio.sleep(_FRAME_S)

    # ---- wire -----------------------------------------------------------------------------
    def _stamp(self, message: dict) -> dict:
        """Add ``sequenceNumber`` (one counter for every message) and ``streamSid``."""
        self._seq += 1
        return {
            "event": message["event"],
            "sequenceNumber": str(self._seq),
            "streamSid": self.stream_sid,
            **message,
        }

    async def _send_now(self, message: dict) -> None:
        self.messages_sent.append(message)
        await self._ws.send(orjson.dumps(message).decode())

    async def _clock(self) -> None:
        """Every 20 ms on a drift-free monotonic schedule: send one frame, play one frame."""
        start = self._clock_start = time.monotonic()
        while True:
            # Catch up with a burst after a stall, as a real edge would, so timestamps stay true.
            due = int((time.monotonic() - start) / _FRAME_S) + 1
            while self.frame_no < due:
                if self._hanging_up:
                    return  # stop has been queued: Twilio sends no media after it
                if not self._between_streams:  # (between two streams the caller's frames go nowhere)
                    self._send_frame(self.frame_no - self._stream_frame0)
                    heard = len(self.heard)
                    if self._playout.tick():
                        self.played.append((self.frame_no, bytes(self.heard[heard:])))
                self.frame_no += 1
            await asyncio.sleep(max(0.0, start + self.frame_no * _FRAME_S - time.monotonic()))

    def _send_frame(self, frame_no: int) -> None:
        if self._speech:
            frame = bytes(self._speech[:FRAME_BYTES]).ljust(FRAME_BYTES, bytes([SILENCE_BYTE]))
            taken = min(FRAME_BYTES, len(self._speech))
            del self._speech[:FRAME_BYTES]
            self._speech_sent += taken
            for end, fut in self._waiters:
                if end <= self._speech_sent and not fut.done():
                    fut.set_result(None)
            self._waiters = [w for w in self._waiters if not w[1].done()]
        else:
            frame = _SILENCE_FRAME if self.tag is None else tag_frame(self.tag, frame_no)
        self.sent_audio += frame
        self.sent_times.append(time.monotonic())
        self._chunk += 1
        self._outbound.put(self._stamp({"event": "media", "media": {
            "track": "inbound", "chunk": str(self._chunk), "timestamp": str(frame_no * 20),
            "payload": base64.b64encode(frame).decode(),
        }}))  # fmt: skip

    def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append(name)
        self._outbound.put(self._stamp({"event": "mark", "mark": {"name": name}}))

    async def _read(self) -> None:
        ws = self._ws
        try:
            async for raw in ws:
                self._inbound.put(raw)
        except ConnectionClosed:
            pass
        if ws is not self._ws or self._between_streams:
            return  # Twilio closed it to move the call to a new stream
        # Let already-received messages reach the caller before the call ends.
        with contextlib.suppress(TimeoutError):
            await self._poll_until(lambda: self._inbound.pending == 0, 5 + self._inbound.delay_s)
        await self._finish(by_server=True)

    async def _receive_now(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
            event = message["event"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.protocol_error(f"not a JSON event: {raw[:80]!r}")
            return
        self.messages_received.append(message)
        if event not in _ALLOWED:
            self.protocol_error(f"unknown event {event!r}")
            return
        if extra := set(message) - _ALLOWED[event]:
            self.protocol_error(f"{event}: unknown fields {sorted(extra)}")
        if message.get("streamSid") in self._old_sids:
            return  # sent before the gateway heard the stream stop: the stream is gone
        if message.get("streamSid") != self.stream_sid:
            self.protocol_error(f"{event}: wrong streamSid {message.get('streamSid')!r}")
            return  # Twilio ignores messages for another stream
        if event == "media":
            try:
                payload = base64.b64decode(message["media"]["payload"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                self.protocol_error("media: missing or invalid payload")
                return
            now = time.monotonic()
            self.media_received.append((now, len(payload)))
            self._last_arrival = now
            if len(payload) < 2 * FRAME_BYTES:
                self.protocol_error(f"media: {len(payload)} bytes (< 40 ms) stutters")
            self._playout.add_audio(payload)
        elif event == "mark":
            self._playout.add_mark(str((message.get("mark") or {}).get("name", "")))
        else:
            self._playout.clear()
            self.clears.append((time.monotonic(), len(self.heard)))


_open_calls: weakref.WeakValueDictionary[str, SimCall] = weakref.WeakValueDictionary()


def open_call(call_sid: str) -> SimCall | None:
    """The call whose media stream is open now, by CallSid (what Twilio's REST API acts on)."""
    return _open_calls.get(call_sid)


def _ws_url(stream_url: str, base_url: str) -> str:
    """The TwiML's public stream URL, redirected to where the gateway really listens."""
    stream, base = urlsplit(stream_url), urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme)
    return urlunsplit((scheme, base.netloc, stream.path, stream.query, ""))


def _parse_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError(f"TwiML has no <Connect><Stream url>: {twiml!r}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


async def dial(
    base_url: str,
    auth_token: str,
    *,
    public_base_url: str | None = None,
    account_sid: str | None = None,
    call_sid: str | None = None,
    from_: str = "+15005550001",
    to: str = "+15005550006",
    one_way_delay_ms: float = 0,
    jitter_ms: float = 0,
    burst_ms: float = 0,
    seed: int = 0,
    sign: bool = True,
    extra_params: dict[str, str] | None = None,
    webhook_path: str = "/twilio-voice",
    stream_delay_s: float = 0.0,
    move_delay_s: float = 0.4,
    tag: int | None = None,
) -> SimCall:
    """Place an inbound call against the gateway at ``base_url`` and return it streaming.

    Args:
        public_base_url: the URL Twilio would use (what the gateway validates signatures
            against); defaults to ``base_url``.
        sign: send ``X-Twilio-Signature`` headers (False to test rejection).
        one_way_delay_ms: latency added to every message in each direction.
        jitter_ms: a further random delay of each message, order kept (bunching).
        burst_ms: messages delivered only at multiples of this period, in bursts.
        seed: seeds the jitter (each direction its own stream).
        webhook_path: path and query of the voice webhook (an outbound call's ``url``).
        stream_delay_s: Twilio's set-up of the media stream after the webhook's answer (about 0.5 s).
        move_delay_s: after a REST update moves the call, from the old stream's close to the new
            stream's connection (Twilio's own set-up of the new ``<Connect><Stream>``).
        tag: a number (0-65535) the caller's silence carries (:func:`~dialtone_sim.audio.tag_frame`,
            still digital silence): the model simulators then follow the script they hold for it
            (``scripts[tag]``), so calls with scripts of their own can run at once.

    Raises:
        WebhookRejected: the webhook answered non-200.
        StreamRejected: the WebSocket upgrade was refused or closed during the handshake.
    """
    account_sid = account_sid or _sid("AC")
    call_sid = call_sid or _sid("CA")
    validator = RequestValidator(auth_token)
    params = {"CallSid": call_sid, "AccountSid": account_sid, "From": from_, "To": to,
              "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01",
              **(extra_params or {})}  # fmt: skip
    webhook = (public_base_url or base_url).rstrip("/") + webhook_path
    headers = {"X-Twilio-Signature": validator.compute_signature(webhook, params)} if sign else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url.rstrip("/") + webhook_path, data=params, headers=headers) as resp:
            if resp.status != 200:
                raise WebhookRejected(resp.status)
            twiml = await resp.text()
    stream_url, custom = _parse_twiml(twiml)
    if stream_delay_s > 0:
        await asyncio.sleep(stream_delay_s)
    ws_headers = {"X-Twilio-Signature": validator.compute_signature(stream_url, {})} if sign else {}
    try:
        ws = await connect(_ws_url(stream_url, base_url), additional_headers=ws_headers, ping_interval=None)
    except InvalidStatus as exc:
        raise StreamRejected(exc.response.status_code) from exc
    call = SimCall(ws, account_sid=account_sid, call_sid=call_sid, custom_parameters=custom, from_=from_, to=to,
                   inbound=Network(one_way_delay_ms, jitter_ms, burst_ms, seed=2 * seed),
                   outbound=Network(one_way_delay_ms, jitter_ms, burst_ms, seed=2 * seed + 1))  # fmt: skip
    call.base_url, call.auth_token, call.move_delay_s = base_url, auth_token, move_delay_s
    call.tag = tag
    try:
        await call._open()
    except ConnectionClosed as exc:
        raise StreamRejected(ws.close_code) from exc
    return call


async def place_scripted_call(
    base_url: str, auth_token: str, lines: list[str], *, greeting: bool = True, **dial_kwargs: Any
) -> SimCall:
    """Dial, (wait out the greeting,) say each line and wait for the agent to go quiet, hang up."""
    call = await dial(base_url, auth_token, **dial_kwargs)
    try:
        if greeting:
            await call.wait_quiet(since=0)
        for line in lines:
            await call.say(line)
            await call.wait_quiet()
    finally:
        await call.hangup()
    return call
