"""The Twilio edge simulator against a tiny fake media-gateway (aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiohttp import WSMsgType, web
from dialtone_sim.audio import silence
from dialtone_sim.playout import Playout
from dialtone_sim.speech import synthesize
from dialtone_sim.twilio_edge import SimCall, StreamRejected, WebhookRejected, dial
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

pytestmark = pytest.mark.unit

TOKEN = "test-auth-token"
PUBLIC = "https://gateway.example.com"


class FakeGateway:
    """Validates signatures like the real gateway must, records what the caller sends."""

    def __init__(self) -> None:
        self.validator = RequestValidator(TOKEN)
        self.received: list[tuple[float, dict]] = []
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.base_url = ""
        self.stream_url = "wss://gateway.example.com/media"  # what the TwiML says

    async def voice(self, request: web.Request) -> web.Response:
        params = dict(await request.post())
        if not self.validator.validate(
            f"{PUBLIC}/twilio-voice", params, request.headers.get("X-Twilio-Signature", "")
        ):
            return web.Response(status=403)
        twiml = VoiceResponse()
        stream = twiml.connect().stream(url=self.stream_url)
        stream.parameter(name="agent", value="front-desk")
        stream.parameter(name="call_sid", value=params["CallSid"])
        return web.Response(text=str(twiml), content_type="text/xml")

    async def media(self, request: web.Request) -> web.StreamResponse:
        if not self.validator.validate(
            "wss://gateway.example.com" + request.path, {}, request.headers.get("X-Twilio-Signature", "")
        ):
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.connected.set()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.received.append((time.monotonic(), orjson.loads(msg.data)))
        return ws

    def events(self, kind: str) -> list[dict]:
        return [m for _, m in self.received if m["event"] == kind]

    async def send(self, message: dict) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(message).decode())


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:  # noqa: ASYNC109 - test helper
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling with a deadline
            await asyncio.sleep(0.005)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    app = web.Application()
    app.router.add_post("/twilio-voice", gw.voice)
    app.router.add_get("/media", gw.media)
    app.router.add_get("/media/{tail:.+}", gw.media)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gw.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield gw
    await runner.cleanup()


async def place(gw: FakeGateway, **kwargs: object) -> SimCall:
    call = await dial(gw.base_url, TOKEN, public_base_url=PUBLIC, **kwargs)  # type: ignore[arg-type]
    await gw.connected.wait()
    return call


async def test_signed_handshake_shapes_and_pacing(gateway: FakeGateway) -> None:
    call = await place(gateway)
    await until(lambda: len(gateway.events("media")) >= 50)
    await call.press("7")
    await call.hangup()
    await until(lambda: gateway.events("stop"))

    kinds = [m["event"] for _, m in gateway.received]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop" and "dtmf" in kinds
    start = gateway.events("start")[0]
    assert start["sequenceNumber"] == "1" and start["streamSid"] == call.stream_sid
    assert start["start"]["customParameters"] == {"agent": "front-desk", "call_sid": call.call_sid}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["callSid"].startswith("CA") and len(start["start"]["callSid"]) == 34
    numbered = [m for _, m in gateway.received if m["event"] != "connected"]
    assert [m["sequenceNumber"] for m in numbered] == [str(i) for i in range(1, len(numbered) + 1)]
    media = gateway.events("media")
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * i) for i in range(len(media))]
    assert all(base64.b64decode(m["media"]["payload"]) == silence(20) for m in media)
    assert gateway.events("dtmf")[0]["dtmf"] == {"track": "inbound_track", "digit": "7"}
    assert gateway.events("stop")[0]["stop"] == {"accountSid": call.account_sid, "callSid": call.call_sid}

    # Real-time pacing: arrival tracks the 20 ms timestamps with no drift.
    arrivals = [t for t, m in gateway.received if m["event"] == "media"]
    elapsed = arrivals[49] - arrivals[0]
    assert 0.95 <= elapsed <= 1.25, elapsed
    assert call.sent_audio == silence(20 * len(media))
    assert not call.closed_by_server and not call.protocol_errors


async def test_rejections(gateway: FakeGateway) -> None:
    with pytest.raises(WebhookRejected) as webhook:
        await dial(gateway.base_url, TOKEN, public_base_url=PUBLIC, sign=False)
    assert webhook.value.status == 403
    with pytest.raises(WebhookRejected):  # signed for the wrong (internal) URL
        await dial(gateway.base_url, TOKEN)
    # The caller signs the stream URL exactly as the TwiML wrote it; here that is not the URL the
    # gateway validates against, so the upgrade is refused.
    gateway.stream_url = "wss://elsewhere.example.com/media"
    with pytest.raises(StreamRejected) as stream:
        await dial(gateway.base_url, TOKEN, public_base_url=PUBLIC)
    assert stream.value.status == 403


async def test_say_playout_marks_and_clear(gateway: FakeGateway) -> None:
    call = await place(gateway)
    speech = synthesize("Hello there", seed=5)
    await call.say(speech)
    inbound = b"".join(base64.b64decode(m["media"]["payload"]) for m in gateway.events("media"))
    await until(
        lambda: speech in b"".join(base64.b64decode(m["media"]["payload"]) for m in gateway.events("media"))
    )
    assert speech in bytes(call.sent_audio) and len(inbound) % 160 == 0

    sid = call.stream_sid
    await gateway.send({"event": "mark", "streamSid": sid, "mark": {"name": "empty"}})
    await until(lambda: gateway.events("mark"))  # nothing buffered: echoed at once
    agent = synthesize("Agent speaking", seed=9)[:1600]  # 200 ms
    sent_at = time.monotonic()
    await gateway.send(
        {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(agent).decode()}}
    )
    await gateway.send({"event": "mark", "streamSid": sid, "mark": {"name": "after-200ms"}})
    await until(lambda: len(gateway.events("mark")) >= 2)
    echoed_after = [t for t, m in gateway.received if m["event"] == "mark"][1] - sent_at
    assert 0.18 <= echoed_after <= 0.5, echoed_after
    assert bytes(call.heard) == agent
    assert gateway.events("mark")[1]["mark"] == {"name": "after-200ms"}
    assert int(gateway.events("mark")[1]["sequenceNumber"]) > int(gateway.events("mark")[0]["sequenceNumber"])

    # clear: buffered audio is dropped and the pending mark comes back at once.
    long = synthesize("A long answer that will be interrupted", seed=11)
    await gateway.send(
        {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(long).decode()}}
    )
    await gateway.send({"event": "mark", "streamSid": sid, "mark": {"name": "long-end"}})
    await call.wait_heard(len(agent) / 8 + 100)
    await gateway.send({"event": "clear", "streamSid": sid})
    await until(lambda: call.clears)
    heard_at_clear = call.clears[0][1]
    await until(lambda: len(gateway.events("mark")) >= 3)
    assert call.marks_echoed == ["empty", "after-200ms", "long-end"]
    assert heard_at_clear < len(agent) + len(long)
    frames = len(gateway.events("media"))
    await until(lambda: len(gateway.events("media")) >= frames + 5)  # 100 ms more on the caller's clock
    assert len(call.heard) == heard_at_clear
    assert call.media_received[-1][1] == len(long)
    await call.hangup()


@pytest.mark.expect_sim_errors(r"wrong streamSid 'MZwrong'", r"media: 80 bytes \(< 40 ms\)",
                               r"unknown event 'dance'", r"not a JSON event")  # fmt: skip
async def test_one_way_delay_and_protocol_errors(gateway: FakeGateway) -> None:
    call = await place(gateway, one_way_delay_ms=100)
    sid = call.stream_sid
    await until(lambda: gateway.events("media"))
    sent_at = time.monotonic()
    await gateway.send({"event": "mark", "streamSid": sid, "mark": {"name": "rtt"}})
    await until(lambda: gateway.events("mark"))
    round_trip = [t for t, m in gateway.received if m["event"] == "mark"][0] - sent_at
    assert 0.2 <= round_trip <= 0.4, round_trip

    await gateway.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": "//8="}})
    await gateway.send(
        {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(silence(10)).decode()}}
    )
    await gateway.send({"event": "dance", "streamSid": sid})
    assert gateway.ws is not None
    await gateway.ws.send_str("not json")
    await until(lambda: len(call.protocol_errors) >= 4)
    errors = " | ".join(call.protocol_errors)
    assert (
        "wrong streamSid" in errors and "< 40 ms" in errors and "dance" in errors and "not a JSON" in errors
    )

    await gateway.ws.close()
    await call.wait_closed(5)
    assert call.closed_by_server


def test_playout_unit() -> None:
    echoed: list[str] = []
    p = Playout(echoed.append)
    p.add_mark("first")
    assert echoed == ["first"]
    p.add_audio(b"\x00" * 200)
    p.add_mark("m1")
    p.add_audio(b"\x01" * 100)
    p.add_mark("m2")
    assert p.tick() == 160 and echoed == ["first"]
    # 40 bytes finish the first chunk (m1 due), 100 more finish the second (m2 due).
    assert p.tick() == 140 and echoed == ["first", "m1", "m2"] and p.buffered == 0
    p.add_audio(b"\x02" * 500)
    p.add_mark("m3")
    p.clear()
    assert echoed[-1] == "m3" and p.tick() == 0 and len(p.heard) == 300


async def test_jitter_and_bursts_keep_order_but_bunch_arrivals(gateway: FakeGateway) -> None:
    call = await place(gateway, one_way_delay_ms=20, jitter_ms=120, burst_ms=60, seed=7)
    await until(lambda: len(gateway.events("media")) >= 60, timeout=10)
    sid = call.stream_sid
    for n in range(5):  # agent audio and marks come back through the same kind of network
        await gateway.send({"event": "media", "streamSid": sid,
                            "media": {"payload": base64.b64encode(silence(60)).decode()}})  # fmt: skip
        await gateway.send({"event": "mark", "streamSid": sid, "mark": {"name": f"m{n}"}})
    await until(lambda: len(gateway.events("mark")) == 5, timeout=5)
    await call.hangup()
    await until(lambda: gateway.events("stop"))

    numbered = [m for _, m in gateway.received if m["event"] != "connected"]
    assert [int(m["sequenceNumber"]) for m in numbered] == list(range(1, len(numbered) + 1))  # order kept
    assert call.marks_echoed == [f"m{n}" for n in range(5)]
    arrivals = [t for t, m in gateway.received if m["event"] == "media"][:60]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # Bunched: most frames land together (no 20 ms spacing), then a long wait for the next burst.
    assert sum(g < 0.005 for g in gaps) > len(gaps) / 2, gaps
    assert max(gaps) >= 0.05, gaps
    # The caller's clock is untouched: timestamps still say 20 ms apart.
    assert [m["media"]["timestamp"] for m in gateway.events("media")[:60]] == [str(20 * i) for i in range(60)]
    assert not call.protocol_errors and call.ended_by == "caller"


# twilio-python 9.x's async client uses aiohttp.BasicAuth, which aiohttp 3.14 deprecates (the SDK's to fix).
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")
async def test_a_rest_hang_up_or_redirect_stops_the_open_stream(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dialtone_sim.twilio_api import FakeTwilioApi
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    account = "AC" + "0" * 32
    async with FakeTwilioApi(account, TOKEN) as api:
        http = AsyncTwilioHttpClient()
        rest = Client(account, TOKEN, http_client=http)
        rest.api.base_url = api.base_url
        try:
            for update in ({"status": "completed"}, {"twiml": "<Response><Dial>+15005550010</Dial></Response>"}):
                gateway.connected.clear()
                call = await place(gateway, account_sid=account)
                stops = len(gateway.events("stop"))
                # An inbound call nobody registered with the API: Twilio knows it by its open stream.
                await rest.calls(call.call_sid).update_async(**update)
                await call.wait_closed(5)
                await until(lambda: len(gateway.events("stop")) == stops + 1)  # noqa: B023
                assert gateway.events("stop")[-1]["stop"]["callSid"] == call.call_sid
                assert call.ended_by == "twilio" and not call.closed_by_server
                assert api.calls[call.call_sid].direction == "inbound"
        finally:
            await http.close()


@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")
async def test_a_rest_update_to_another_stream_moves_the_call_as_twilio_does(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New TwiML with a ``<Connect><Stream>``: ``stop`` on the old stream, whose queued agent
    audio is dropped, then after the set-up delay a new stream (new streamSid, timestamps from 0)
    to the new URL; the caller's clock runs on through the gap, and what they said waits."""
    from dialtone_sim.twilio_api import FakeTwilioApi
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    account = "AC" + "0" * 32
    async with FakeTwilioApi(account, TOKEN) as api:
        http = AsyncTwilioHttpClient()
        rest = Client(account, TOKEN, http_client=http)
        rest.api.base_url = api.base_url
        try:
            call = await place(gateway, account_sid=account, move_delay_s=0.3)
            old_ws, old_sid = gateway.ws, call.stream_sid
            await gateway.send({"event": "media", "streamSid": old_sid,
                                "media": {"payload": base64.b64encode(silence(2000)).decode()}})
            await gateway.send({"event": "mark", "streamSid": old_sid, "mark": {"name": "queued"}})
            await call.wait_heard(100)
            gateway.connected.clear()
            twiml = VoiceResponse()
            twiml.connect().stream(url="wss://gateway.example.com/media/moved")
            await rest.calls(call.call_sid).update_async(twiml=str(twiml))
            await until(lambda: len(gateway.events("start")) == 2)
            assert gateway.ws is not old_ws and old_ws is not None and old_ws.closed
            assert gateway.events("stop")[-1]["streamSid"] == old_sid
            starts = gateway.events("start")
            assert starts[1]["start"]["callSid"] == call.call_sid
            assert starts[1]["streamSid"] == call.stream_sid != old_sid
            await call.say(silence(100))
            new_media = [m for m in gateway.events("media") if m["streamSid"] == call.stream_sid]
            assert new_media and new_media[0]["media"]["timestamp"] == "0"
            (move,) = call.moves
            assert move.gap_s >= 0.3 and move.resume_frame > move.stop_frame
            assert len(call.heard) < 2000 * 8 and "queued" not in call.marks_echoed  # dropped, not echoed
            assert not call.closed and not call.protocol_errors
            assert api.calls[call.call_sid].updates[-1]["Twiml"] == str(twiml)
        finally:
            await http.close()
            await call.hangup()
