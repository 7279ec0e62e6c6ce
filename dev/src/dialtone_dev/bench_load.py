"""The bench's load generator: many simulated Twilio calls from one process, cheaply.

It speaks to the media-gateway exactly as Twilio does (:mod:`dialtone_sim.twilio_edge` is the
reference): the signed voice webhook, the TwiML's stream URL, a signed Media Streams WebSocket,
``connected`` and ``start``, a ``media`` message every 20 ms, marks echoed when the audio before them
has played, ``stop`` at the hang-up. It checks what the gateway sends as Twilio would (known events
and fields only, the right streamSid, valid base64, no media shorter than 40 ms) and records each
departure from it as a protocol error, which fails the bench.

What makes it cheap enough to drive 300 calls from one core:

* one 20 ms clock per process for every call, not a task per call, and the caller's script is a
  state machine stepped by that clock (no per-call polling);
* media messages are formatted from precomputed base64 payloads (speech is synthesized once per
  line, the synthetic voiced signal of :mod:`dialtone_sim.speech`), no pydantic, no per-frame JSON
  encoder; the silent frames carry the call's and the frame's number in the audio
  (:func:`~dialtone_dev.bench_figures.tag_frame`);
* raw ``websockets`` clients without compression (Twilio does not compress either).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import math
import os
import pickle
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import uvloop
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from dialtone_dev.bench_figures import FRAME_BYTES, FRAME_S, tag_frame

LINES = [
    "Hi, I have a question about my order.",
    "Can you tell me when it will arrive?",
    "And what is the return policy?",
    "Thanks, that is all.",
]
QUIET_S = 0.8  # the agent's reply is over: played out, then this long without new audio
REPLY_TIMEOUT_S = 30.0
_ALLOWED = {  # what a gateway may send Twilio (PROTOCOLS.md 1.3); anything else is warning 31950/31951
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


@dataclass
class Target:
    """Where the calls go: the gateway (or the reference bridge) and Twilio's credentials."""

    base_url: str
    public_base_url: str
    auth_token: str
    account_sid: str
    to: str = "+15005550006"


@dataclass
class CallResult:
    """What one call recorded (picklable: it goes back to the bench's process)."""

    index: int
    call_sid: str
    webhook_at: float = 0.0  # the voice webhook was posted
    stream_at: float | None = None  # the media stream opened
    first_audio_at: float | None = None  # the first agent audio arrived
    hung_up_at: float = 0.0
    sent_times: list[float] = field(default_factory=list)  # monotonic send time of frame n
    received: list[tuple[float, int]] = field(default_factory=list)  # (arrival, bytes) per media message
    stops: list[float] = field(default_factory=list)  # the caller stopped speaking (last voiced frame sent)
    replies: list[tuple[float | None, float | None]] = field(default_factory=list)  # per stop: arrived, heard
    marks_echoed: int = 0
    error: str | None = None
    protocol_errors: list[str] = field(default_factory=list)


class _Call:
    """One call's state, stepped by the process's clock."""

    def __init__(self, index: int, speech: list[list[str]]) -> None:
        self.r = CallResult(index, "CA" + secrets.token_hex(16))
        self.deadline = math.inf  # set when the stream opens
        self.speech = speech
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.ws: ClientConnection | None = None
        self.seq = 0
        self.frame_no = 0
        self.pending: deque[str] = deque()  # speech payloads still to send
        self.line = 0
        self.state = "greeting"  # greeting -> speaking -> listening -> ... -> done
        self.turn_from = 0  # received bytes when the current wait for the agent began
        self.waiting_since = 0.0
        self.received_bytes = 0
        self.played = 0
        self.last_arrival = 0.0
        self.marks: deque[tuple[int, str]] = deque()  # (position, name) waiting to be played
        self.reply_at: int | None = None  # position of the reply being waited on, to time "heard"
        self.done = asyncio.Event()

    # ---- the wire ----------------------------------------------------------------------
    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def media(self, payload: str) -> str:
        seq = self._next()
        return (f'{{"event":"media","sequenceNumber":"{seq}","streamSid":"{self.stream_sid}","media":'
                f'{{"track":"inbound","chunk":"{self.frame_no + 1}","timestamp":"{self.frame_no * 20}",'
                f'"payload":"{payload}"}}}}')  # fmt: skip

    def control(self, event: str, body: dict) -> str:
        return orjson.dumps({"event": event, "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                             event: body}).decode()  # fmt: skip

    def error(self, message: str) -> None:
        self.r.protocol_errors.append(f"twilio call {self.r.call_sid}: {message}")

    def on_message(self, raw: str | bytes, now: float) -> list[str]:
        """One message from the gateway; returns the mark echoes to send now."""
        try:
            message = orjson.loads(raw)
            event = message["event"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.error(f"not a JSON event: {raw[:80]!r}")
            return []
        if event not in _ALLOWED:
            self.error(f"unknown event {event!r}")
            return []
        if extra := set(message) - _ALLOWED[event]:
            self.error(f"{event}: unknown fields {sorted(extra)}")
        if message.get("streamSid") != self.stream_sid:
            self.error(f"{event}: wrong streamSid {message.get('streamSid')!r}")
            return []
        if event == "media":
            try:
                size = len(base64.b64decode(message["media"]["payload"], validate=True))
            except (KeyError, TypeError, binascii.Error):
                self.error("media: missing or invalid payload")
                return []
            if size < 2 * FRAME_BYTES:
                self.error(f"media: {size} bytes (< 40 ms) stutters")
            if self.r.first_audio_at is None:
                self.r.first_audio_at = now
            if self.r.replies and self.r.replies[-1][0] is None and self.state == "listening":
                self.r.replies[-1] = (now, None)
                self.reply_at = self.received_bytes
            self.r.received.append((now, size))
            self.received_bytes += size
            self.last_arrival = now
            return []
        if event == "mark":
            self.marks.append((self.received_bytes, str((message.get("mark") or {}).get("name", ""))))
            return self._echo_marks()
        self.played = self.received_bytes  # clear: the buffer is dropped, every pending mark echoed
        return self._echo_marks()

    def _echo_marks(self) -> list[str]:
        out = []
        while self.marks and self.marks[0][0] <= self.played:
            _, name = self.marks.popleft()
            self.r.marks_echoed += 1
            out.append(self.control("mark", {"name": name}))
        return out

    # ---- one 20 ms tick --------------------------------------------------------------------
    def tick(self, now: float) -> list[str]:
        """Send this tick's frame, play 20 ms, step the script. Returns the messages to send."""
        voiced = bool(self.pending)
        payload = self.pending.popleft() if voiced else _tagged(self.r.index, self.frame_no)
        out = [self.media(payload)]
        self.r.sent_times.append(now)
        self.frame_no += 1
        if voiced and not self.pending:  # the last of the line: the caller stopped speaking
            self.r.stops.append(now)
            self.r.replies.append((None, None))
            self.state, self.turn_from, self.waiting_since = "listening", self.received_bytes, now
        if self.played < self.received_bytes:
            self.played = min(self.received_bytes, self.played + FRAME_BYTES)
            if self.reply_at is not None and self.played > self.reply_at:
                arrived, _ = self.r.replies[-1]
                self.r.replies[-1] = (arrived, now)
                self.reply_at = None
            out += self._echo_marks()
        if self.state in ("greeting", "listening") and self._quiet(now):
            if now >= self.deadline:
                self.state = "done"
            else:
                self.pending.extend(self.speech[self.line % len(self.speech)])
                self.line += 1
                self.state = "speaking"
        elif self.state in ("greeting", "listening") and now - self.waiting_since > REPLY_TIMEOUT_S:
            self.r.error = f"no reply from the agent within {REPLY_TIMEOUT_S:.0f} s ({self.state})"
            self.state = "done"
        return out

    def _quiet(self, now: float) -> bool:
        return (self.received_bytes > self.turn_from and self.played >= self.received_bytes
                and now - self.last_arrival >= QUIET_S)  # fmt: skip


def _tagged(call: int, frame_no: int) -> str:
    return base64.b64encode(tag_frame(call, frame_no)).decode()


class LoadGenerator:
    """``count`` calls (numbered from ``first``), placed ``ramp_s`` apart, each ``duration`` long."""

    def __init__(self, target: Target, first: int, count: int, duration: float, *, ramp_s: float = 0.02,
                 stream_delay_s: float = 0.5, orphans: int = 0) -> None:  # fmt: skip
        from dialtone_sim import speech

        speech.real_speech(False)  # the synthetic voiced signal: espeak-ng would cost more than the platform
        self.target, self.first, self.count, self.duration = target, first, count, duration
        self.ramp_s, self.stream_delay_s, self.orphans = ramp_s, stream_delay_s, orphans
        self.validator = RequestValidator(target.auth_token)
        self.speech = [
            [base64.b64encode(audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")).decode()
             for i in range(0, len(audio), FRAME_BYTES)]
            for audio in (speech.synthesize(line, seed=n) for n, line in enumerate(LINES))
        ]  # fmt: skip
        self.calls: list[_Call] = []
        self.late_ms: list[float] = []  # how late each clock tick ran: the load generator's own lag
        self.orphan_sids: list[str] = []
        self._live: set[_Call] = set()

    async def run(self) -> list[CallResult]:
        async with aiohttp.ClientSession() as http:
            for _ in range(self.orphans):  # webhooks whose stream never comes
                sid = "CA" + secrets.token_hex(16)
                with contextlib.suppress(Exception):
                    await self._webhook(http, sid, f"+1500666{len(self.orphan_sids):04d}")
                self.orphan_sids.append(sid)
            clock = asyncio.create_task(self._clock())
            try:
                await asyncio.gather(*(self._one(http, i) for i in range(self.count)))
            finally:
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
        return [c.r for c in self.calls]

    async def _webhook(self, http: aiohttp.ClientSession, call_sid: str, from_: str) -> str:
        t = self.target
        params = {"CallSid": call_sid, "AccountSid": t.account_sid, "From": from_, "To": t.to,
                  "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01"}  # fmt: skip
        url = t.public_base_url.rstrip("/") + "/twilio-voice"
        headers = {"X-Twilio-Signature": self.validator.compute_signature(url, params)}
        async with http.post(t.base_url.rstrip("/") + "/twilio-voice", data=params, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"voice webhook answered HTTP {resp.status}")
            twiml = await resp.text()
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise RuntimeError(f"TwiML has no <Connect><Stream url>: {twiml[:120]!r}")
        return stream.get("url", "")

    async def _one(self, http: aiohttp.ClientSession, n: int) -> None:
        index = self.first + n
        await asyncio.sleep(n * self.ramp_s)
        call = _Call(index, self.speech)
        self.calls.append(call)
        r = call.r
        try:
            r.webhook_at = time.monotonic()
            stream_url = await self._webhook(http, r.call_sid, f"+1500555{index % 10000:04d}")
            await asyncio.sleep(self.stream_delay_s)  # Twilio sets up the media stream
            stream, base = urlsplit(stream_url), urlsplit(self.target.base_url)
            ws_url = urlunsplit(({"http": "ws", "https": "wss"}[base.scheme], base.netloc, stream.path, stream.query, ""))
            headers = {"X-Twilio-Signature": self.validator.compute_signature(stream_url, {})}
            # A large write limit: a gateway that stops reading one call's socket must not stall the
            # clock of every call (as TCP would, the frames wait in that call's own buffer).
            call.ws = await connect(ws_url, additional_headers=headers, ping_interval=None, compression=None,
                                    max_queue=None, write_limit=2**24)  # fmt: skip
            r.stream_at = time.monotonic()
            call.deadline = r.stream_at + self.duration
            await call.ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
            await call.ws.send(call.control("start", {
                "accountSid": self.target.account_sid, "streamSid": call.stream_sid, "callSid": r.call_sid,
                "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}))  # fmt: skip
            call.waiting_since = time.monotonic()
            self._live.add(call)
            reader = asyncio.create_task(self._read(call))
            await call.done.wait()
            r.hung_up_at = time.monotonic()
            self._live.discard(call)
            if not reader.done():
                await call.ws.send(call.control("stop", {"accountSid": self.target.account_sid, "callSid": r.call_sid}))
                await call.ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 10)
        except Exception as exc:  # one failed call is a figure, not the end of the bench
            r.error = r.error or f"{type(exc).__name__}: {exc}"
            r.hung_up_at = r.hung_up_at or time.monotonic()
            self._live.discard(call)

    async def _read(self, call: _Call) -> None:
        assert call.ws is not None
        try:
            async for raw in call.ws:
                for echo in call.on_message(raw, time.monotonic()):
                    await call.ws.send(echo)
        except ConnectionClosed:
            pass
        if call.state != "done":
            call.r.error = call.r.error or "the gateway closed the stream before the caller hung up"
            call.state = "done"
        call.done.set()

    async def _clock(self) -> None:
        """Every 20 ms on a drift-free schedule: every live call sends a frame and plays 20 ms; after
        a stall, the frames due are sent in a burst, as a real edge would."""
        start = time.monotonic()
        tick = 0
        while True:
            due = int((time.monotonic() - start) / FRAME_S) + 1
            while tick < due:
                now = time.monotonic()
                if self._live:
                    self.late_ms.append((now - start - tick * FRAME_S) * 1000)
                for call in list(self._live):
                    if call.state == "done":
                        call.done.set()
                        continue
                    ws = call.ws
                    assert ws is not None
                    if ws.state is not State.OPEN:
                        # Closing: a send now would wait for the close handshake (up to 10 s) and
                        # hold back every other call's frames; the reader ends this call.
                        continue
                    try:
                        for message in call.tick(now):
                            await ws.send(message)
                    except ConnectionClosed:
                        continue  # the reader sees it and ends the call
                    if call.state == "done":
                        call.done.set()
                tick += 1
                if tick % 50 == 0:
                    gc.freeze()  # what the calls recorded so far: out of the full collections' way
            await asyncio.sleep(max(0.0, start + tick * FRAME_S - time.monotonic()))


def run_process(target: Target, first: int, count: int, duration: float, out: str, stream_delay_s: float,
                ramp_s: float, orphans: int, cpus: list[int] | None) -> None:  # fmt: skip
    """A load generator process's entry point: results pickled to ``out``."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    gen = LoadGenerator(target, first, count, duration, ramp_s=ramp_s, stream_delay_s=stream_delay_s,
                        orphans=orphans)  # fmt: skip
    results = uvloop.run(gen.run())  # the cheaper event loop: more calls per load core
    Path(out).write_bytes(pickle.dumps({"calls": results, "orphans": gen.orphan_sids, "late_ms": gen.late_ms}))
