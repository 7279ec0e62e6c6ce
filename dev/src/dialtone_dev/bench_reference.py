"""The single-process reference bridge of ``make bench``: what Twilio's own sample
(``speech-assistant-openai-realtime-api-python``, FastAPI) does, in one process, for comparison.

It answers the signed voice webhook with TwiML, accepts the Media Streams WebSocket, opens one
model socket per call (Realtime or GPT-Live) and relays: each Twilio ``media`` payload becomes an
audio append (the base64 string passed on as is), each model audio delta becomes a Twilio ``media``
message followed by a ``mark``; when the caller starts speaking over queued audio it sends
``clear``. No bus, no database, no recording, no transcript, no metrics: the floor against which
the platform's CPU per call and added latency are compared. It is used only by the bench (aiohttp,
already a dependency of the tools, serves both the webhook and the socket, as FastAPI does in the
sample).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from typing import Any
from xml.sax.saxutils import quoteattr

import orjson
import uvloop
from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

GREETING = "Hello, bench line."
INSTRUCTIONS = "You are the bench's phone agent. Answer briefly."


class ReferenceBridge:
    def __init__(self, engine: str, model_url: str, public_base_url: str, auth_token: str) -> None:
        self.engine, self.model_url = engine, model_url
        self.public_base_url = public_base_url.rstrip("/")
        self.validator = RequestValidator(auth_token)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twilio-voice", self.voice)
        app.router.add_get("/media-stream", self.media_stream)
        return app

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        url = self.public_base_url + "/twilio-voice"
        if not self.validator.validate(url, params, request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        stream = self.public_base_url.replace("http", "ws", 1) + "/media-stream"
        twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url={quoteattr(stream)}/></Connect></Response>'
        return web.Response(text=twiml, content_type="application/xml")

    async def media_stream(self, request: web.Request) -> web.WebSocketResponse:
        url = self.public_base_url.replace("http", "ws", 1) + "/media-stream"
        if not self.validator.validate(url, {}, request.headers.get("X-Twilio-Signature", "")):
            raise web.HTTPForbidden()
        twilio = web.WebSocketResponse(compress=False)
        await twilio.prepare(request)
        stream_sid = ""
        async for msg in twilio:  # connected, then start
            if msg.type != WSMsgType.TEXT:
                break
            event = orjson.loads(msg.data)
            if event.get("event") == "start":
                stream_sid = event["start"]["streamSid"]
                break
        if not stream_sid:
            return twilio
        async with connect(self.model_url, additional_headers={"Authorization": "Bearer sk-bench"},
                           ping_interval=None, compression=None, max_size=2**24) as model:  # fmt: skip
            await self._start(model)
            relay = _Relay(twilio, model, stream_sid, self.engine)
            outbound = asyncio.create_task(relay.model_to_twilio())
            try:
                await relay.twilio_to_model()
            finally:
                outbound.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await outbound
        await twilio.close()
        return twilio

    async def _start(self, model: ClientConnection) -> None:
        say = f'Greet the caller. Say exactly: "{GREETING}"'
        if self.engine == "live":
            await model.send(orjson.dumps({"type": "session.start", "session": {
                "model": "gpt-live", "instructions": INSTRUCTIONS,
                "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}}}}).decode())  # fmt: skip
            async for raw in model:
                if orjson.loads(raw).get("type") == "session.started":
                    break
            await model.send(orjson.dumps({"type": "session.commentary.append", "content": say,
                                           "delegation_id": None}).decode())  # fmt: skip
            return
        await model.send(orjson.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": INSTRUCTIONS, "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                      "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}}).decode())  # fmt: skip
        await model.send(orjson.dumps({"type": "response.create", "response": {"instructions": say}}).decode())


class _Relay:
    """One call's two directions."""

    def __init__(self, twilio: web.WebSocketResponse, model: ClientConnection, stream_sid: str, engine: str) -> None:
        self.twilio, self.model, self.stream_sid = twilio, model, stream_sid
        live = engine == "live"
        self.append = '{"type":"session.input_audio.append","audio":"' if live else '{"type":"input_audio_buffer.append","audio":"'
        self.delta = "session.output_audio.delta" if live else "response.output_audio.delta"
        self.started = "session.input_transcript.delta" if live else "input_audio_buffer.speech_started"
        self.marks = 0  # sent and not yet echoed

    async def twilio_to_model(self) -> None:
        async for msg in self.twilio:
            if msg.type != WSMsgType.TEXT:
                break
            event: dict[str, Any] = orjson.loads(msg.data)
            kind = event.get("event")
            if kind == "media":
                await self.model.send(self.append + event["media"]["payload"] + '"}')
            elif kind == "mark":
                self.marks = max(0, self.marks - 1)
            elif kind == "stop":
                break

    async def model_to_twilio(self) -> None:
        sid = self.stream_sid
        n = 0
        async for raw in self.model:
            event = orjson.loads(raw)
            kind = event.get("type")
            if kind == self.delta:
                if self.engine_silence(event["delta"]):
                    continue
                n += 1
                await self.twilio.send_str('{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
                                           + event["delta"] + '"}}')  # fmt: skip
                await self.twilio.send_str('{"event":"mark","streamSid":"' + sid + '","mark":{"name":"r' + str(n) + '"}}')
                self.marks += 1
            elif kind == self.started and self.marks:
                await self.twilio.send_str('{"event":"clear","streamSid":"' + sid + '"}')
                self.marks = 0

    def engine_silence(self, delta: str) -> bool:
        """GPT-Live streams silence between utterances; like any relay, do not forward it."""
        return self.delta == "session.output_audio.delta" and not base64.b64decode(delta).strip(b"\xff")


def run_process(engine: str, model_url: str, port: int, public_base_url: str, auth_token: str,
                cpus: list[int] | None) -> None:  # fmt: skip
    """The reference bridge's process: serve on ``port`` until SIGTERM."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    bridge = ReferenceBridge(engine, model_url, public_base_url, auth_token)

    async def serve() -> None:
        runner = web.AppRunner(bridge.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(serve())  # the event loop the platform's services run on, as uvicorn[standard] would
