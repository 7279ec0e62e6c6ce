"""One Media Stream in process, with a fake Twilio socket and a fake NATS connection.

Covers what the caller would notice: agent audio reaches Twilio in messages of at least 40 ms (a
short tail padded with mu-law silence), marks and clears keep their place, and caller audio
reaches the bridge in order even while the call is being claimed.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from dialtone_gateway import metrics, streams
from dialtone_gateway.settings import GatewaySettings
from dialtone_gateway.streams import MediaStream, StreamContext
from dialtone_proto import CallAnswer, CallOffer, CallRecord, subjects
from dialtone_proto.frames import Kind, decode_frame, encode_control, encode_frame
from starlette.websockets import WebSocketState

pytestmark = pytest.mark.unit

CALL = "CA" + "5" * 32
KEY = "k" * 22
RECORD = CallRecord(
    call_id=CALL, account_sid="AC1", from_number="+15551112222", to_number="+15005550006", agent="billing",
    variables={"order": "42"}, created_at=datetime(2026, 1, 1, tzinfo=UTC), state="streaming", stream_key=KEY,
)
STREAM = "MZ" + "6" * 32
MIN_BYTES = 320  # 40 ms of 8 kHz mu-law
WAIT_S = 5.0  # upper bound for an event that is already due; never a synchronisation sleep


class FakeSocket:
    """The Twilio side of the WebSocket: messages to receive, and everything the gateway sent."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.sent_event = asyncio.Event()
        self.closed_with: int | None = None
        self.idle = asyncio.Event()
        self.application_state = WebSocketState.CONNECTED

    def feed(self, body: dict[str, Any]) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": orjson.dumps(body).decode()})

    def hang_up(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> dict[str, Any]:
        if self.incoming.empty():
            self.idle.set()  # every message fed so far has been handled
        message = await self.incoming.get()
        self.idle.clear()
        return message

    async def drained(self) -> None:
        await asyncio.wait_for(self.idle.wait(), WAIT_S)

    async def send_text(self, text: str) -> None:
        self.sent.append(orjson.loads(text))
        self.sent_event.set()

    async def close(self, code: int = 1000) -> None:
        self.closed_with = code
        self.application_state = WebSocketState.DISCONNECTED

    def media(self) -> list[bytes]:
        return [base64.b64decode(m["media"]["payload"]) for m in self.sent if m["event"] == "media"]


class FakeMsg:
    def __init__(self, data: bytes, subject: str = "") -> None:
        self.data, self.subject = data, subject


class FakeSubscription:
    def __init__(self) -> None:
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


class FakeNats:
    """Records publishes; answers the claim when ``answer`` is set."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.offers: list[CallOffer] = []
        self.out_cb: Callable[[FakeMsg], Awaitable[None]] | None = None
        self.subscribed = asyncio.Event()
        self.answer = asyncio.Event()
        self.claimed = asyncio.Event()
        self.subscription = FakeSubscription()
        self.published_event = asyncio.Event()
        self.out_subjects: list[str] = []
        self.is_connected = True
        self.stats = {"reconnects": 0}

    async def subscribe(self, subject: str, cb: Callable[[FakeMsg], Awaitable[None]], **_: Any) -> FakeSubscription:
        assert subject.startswith(f"dt.v1.call.{CALL}.") and subject.endswith(".out")
        self.out_subjects.append(subject)
        self.out_cb = cb
        self.subscription = FakeSubscription()
        self.subscribed.set()
        return self.subscription

    async def request(self, subject: str, payload: bytes, timeout: float) -> FakeMsg:  # noqa: ASYNC109 (nats-py signature)
        assert subject == subjects.CALL_OFFER
        self.offers.append(CallOffer.model_validate_json(payload))
        await self.answer.wait()
        self.claimed.set()
        return FakeMsg(CallAnswer(call_id=CALL, accepted=True, bridge_id="bridge-1", agent="support").model_dump_json().encode())

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))
        self.published_event.set()

    async def wait_for_frames_in(self, n: int) -> list:
        """Wait (bounded) until ``n`` frames were published to the call's ``in`` subject."""
        async with asyncio.timeout(WAIT_S):
            while len(self.frames_in()) < n:
                self.published_event.clear()
                await self.published_event.wait()
        return self.frames_in()

    def frames_in(self, key: str = "") -> list:
        subject = subjects.call_in(CALL, key or KEY)
        return [decode_frame(d) for s, d in self.published if s == subject]


class FakeJetStream:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str], timeout: float) -> None:  # noqa: ASYNC109
        event = orjson.loads(data)
        assert headers["Nats-Msg-Id"] == event["id"]
        self.events.append(event)


class FakeCallBook:
    """The KV call records, in memory."""

    def __init__(self, record: CallRecord) -> None:
        self.record: CallRecord | None = record

    async def rekey(self, call_id: str, old_key: str, new_key: str, epoch: int, gateway_id: str) -> CallRecord | None:
        if self.record is None or self.record.stream_key != old_key:
            return None
        self.record = self.record.model_copy(update={"stream_key": new_key, "epoch": epoch})
        return self.record

    async def end(self, call_id: str, stream_keys: set[str]) -> CallRecord | None:
        if self.record is not None and self.record.stream_key in stream_keys:
            self.record = self.record.model_copy(update={"state": "ended"})
        return self.record

    async def get(self, call_id: str) -> CallRecord | None:
        return self.record

    async def start_move(self, call_id: str, stream_key: str, gateway_id: str, move_id: str) -> CallRecord | None:
        if self.record is None or self.record.stream_key != stream_key:
            return None
        self.record = self.record.model_copy(update={"state": "moving", "move_id": move_id, "moved_from": gateway_id})
        return self.record

    async def move_stopped(self, call_id: str, move_id: str, seq: int, ts: int, at: float) -> CallRecord | None:
        if self.record is None or self.record.move_id != move_id:
            return None
        self.record = self.record.model_copy(update={"moved_seq": seq, "moved_ts": ts, "moved_at": at})
        return self.record

    async def cancel_move(self, call_id: str, move_id: str) -> CallRecord | None:
        if self.record is None or (self.record.state, self.record.move_id) != ("moving", move_id):
            return None
        self.record = self.record.model_copy(update={"state": "streaming", "move_id": None})
        return self.record


class FakeLine:
    def __init__(self) -> None:
        self.apologised: list[tuple[str, str | None]] = []
        self.moved: list[str] = []

    async def apologise(self, call_sid: str, account_sid: str | None) -> bool:
        self.apologised.append((call_sid, account_sid))
        return True

    async def move(self, call_sid: str, account_sid: str | None, twiml: str) -> str | None:
        """Twilio takes the new TwiML (None: no refusal); whether it stops the stream is the test's."""
        self.moved.append(twiml)
        return None


START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": STREAM,
    "start": {
        "accountSid": "AC1",
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"from": "+15550001", "to": "+15005550006", "agent": "billing", "v_order": "42"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}


def _media(seq: int, ts: int, payload: bytes) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "streamSid": STREAM,
        "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(ts), "payload": base64.b64encode(payload).decode()},
    }


class Call:
    """A running MediaStream with its fakes (``js``, ``calls``, ``line``: the context's, typed as the
    fakes they are)."""

    def __init__(self, stream: MediaStream, ws: FakeSocket, nc: FakeNats, task: asyncio.Task, ctx: StreamContext,
                 js: FakeJetStream, calls: FakeCallBook, line: FakeLine) -> None:  # fmt: skip
        self.stream, self.ws, self.nc, self.task, self.ctx = stream, ws, nc, task, ctx
        self.js, self.calls, self.line = js, calls, line

    async def out(self, data: bytes) -> None:
        assert self.nc.out_cb is not None
        await self.nc.out_cb(FakeMsg(data, self.nc.out_subjects[-1]))

    async def audio(self, payload: bytes) -> None:
        await self.out(encode_frame(Kind.AUDIO, 0, 0, payload))

    async def mark(self, name: str) -> None:
        await self.out(encode_control(Kind.MARK, 0, 0, {"name": name}))

    def events(self) -> list[str]:
        return [m["event"] for m in self.ws.sent]


@pytest.fixture
def no_flush_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep the tail timer out of the way so each test controls exactly when audio is flushed.
    monkeypatch.setattr(streams, "FLUSH_AFTER_S", 3600.0)


async def start_call(nc: FakeNats | None = None, calls: FakeCallBook | None = None, record: CallRecord = RECORD,
                     moved: bool = False, **settings: Any) -> Call:
    """A stream of ``record`` (``moved``: a call another gateway moved here), started."""
    ws, nc = FakeSocket(), nc or FakeNats()
    js, calls, line = FakeJetStream(), calls or FakeCallBook(record), FakeLine()
    config = GatewaySettings(twilio_auth_token="t", public_base_url="https://gw.example.com", **settings)
    ctx = StreamContext(nc, js, calls, line, config, "gw-test",  # type: ignore[arg-type]  # fakes of the bus, book and line
                        move_url=lambda call_id, move_id: f"wss://gw.example.com/media-stream/{call_id}/{move_id}")
    stream = MediaStream(ws, ctx, record, moved=moved)  # type: ignore[arg-type]
    task = asyncio.create_task(stream.run())
    ws.feed({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    ws.feed(START)
    await asyncio.wait_for(nc.subscribed.wait(), WAIT_S)
    return Call(stream, ws, nc, task, ctx, js, calls, line)


@pytest.fixture
async def call(no_flush_timer: None) -> AsyncIterator[Call]:
    c = await start_call()
    ws, nc, task = c.ws, c.nc, c.task
    yield c
    nc.answer.set()
    ws.hang_up()
    await asyncio.wait_for(task, WAIT_S)


# ---- outbound: coalescing ------------------------------------------------------------------


async def test_two_20ms_chunks_go_out_as_one_40ms_message(call: Call) -> None:
    first, second = bytes([1]) * 160, bytes([2]) * 160

    await call.audio(first)
    assert call.ws.sent == []
    await call.audio(second)

    assert call.ws.media() == [first + second]
    assert call.ws.sent[0]["streamSid"] == STREAM


async def test_a_short_tail_before_a_mark_is_padded_with_silence(call: Call) -> None:
    tail = bytes([0x10]) * 100

    await call.audio(tail)
    await call.mark("a0")

    assert call.events() == ["media", "mark"]
    assert call.ws.media() == [tail + b"\xff" * (MIN_BYTES - 100)]
    assert call.ws.sent[1] == {"event": "mark", "streamSid": STREAM, "mark": {"name": "a0"}}


async def test_a_mark_with_nothing_pending_sends_no_empty_media(call: Call) -> None:
    await call.mark("probe-0")

    assert call.ws.sent == [{"event": "mark", "streamSid": STREAM, "mark": {"name": "probe-0"}}]


async def test_a_large_chunk_is_sent_whole_and_unpadded(call: Call) -> None:
    chunk = bytes(range(200)) * 4  # 100 ms

    await call.audio(chunk)
    await call.mark("a0")

    assert call.ws.media() == [chunk]
    assert call.events() == ["media", "mark"]


async def test_clear_drops_a_pending_tail(call: Call) -> None:
    await call.audio(bytes([7]) * 100)
    await call.out(encode_control(Kind.CLEAR, 0, 0, {}))
    await call.mark("a1")

    assert call.ws.sent == [
        {"event": "clear", "streamSid": STREAM},
        {"event": "mark", "streamSid": STREAM, "mark": {"name": "a1"}},
    ]


async def test_hangup_flushes_the_tail_then_closes_the_socket(call: Call) -> None:
    await call.audio(bytes([9]) * 80)
    await call.out(encode_control(Kind.HANGUP, 0, 0, {"reason": "goodbye"}))

    assert call.ws.media() == [bytes([9]) * 80 + b"\xff" * (MIN_BYTES - 80)]
    assert call.ws.closed_with == 1000


async def test_agent_audio_under_40ms_is_never_sent_alone(call: Call) -> None:
    rng = random.Random(7)
    sent_audio = bytearray()
    for i in range(300):
        if rng.random() < 0.3:
            await call.mark(f"a{i}")
        else:
            chunk = bytes([rng.randrange(0, 0xFF)]) * rng.choice([1, 40, 80, 160, 200, 319, 320, 800])
            sent_audio += chunk
            await call.audio(chunk)
    await call.mark("last")

    media = call.ws.media()
    assert all(len(m) >= MIN_BYTES for m in media)
    # Nothing lost, nothing reordered: stripping the padding gives back exactly the agent's audio.
    assert b"".join(m.rstrip(b"\xff") for m in media) == bytes(sent_audio)
    assert call.events()[-1] == "mark"


async def test_a_tail_with_no_mark_after_it_is_padded_and_sent_soon(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "FLUSH_AFTER_S", 0.0)
    await call.audio(bytes([3]) * 50)

    await asyncio.wait_for(call.ws.sent_event.wait(), WAIT_S)
    assert call.ws.media() == [bytes([3]) * 50 + b"\xff" * (MIN_BYTES - 50)]


async def test_bad_frames_from_the_bus_are_skipped(call: Call) -> None:
    await call.out(b"\x09garbage")
    await call.out(encode_frame(Kind.MARK, 0, 0, b"not json"))
    await call.out(encode_control(Kind.DTMF, 0, 0, {"digit": "1"}))
    await call.mark("a0")

    assert call.ws.sent == [{"event": "mark", "streamSid": STREAM, "mark": {"name": "a0"}}]


# ---- inbound -------------------------------------------------------------------------------


async def test_the_offer_carries_the_signed_record_not_the_custom_parameters(call: Call) -> None:
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)

    (offer,) = call.nc.offers
    assert (offer.call_id, offer.stream_sid, offer.account_sid) == (CALL, STREAM, "AC1")
    # START's customParameters say "+15550001": a caller could put anything there.
    assert (offer.from_number, offer.to_number, offer.agent) == ("+15551112222", "+15005550006", "billing")
    assert offer.parameters == {"order": "42"}
    assert (offer.gateway_id, offer.stream_key, offer.epoch) == ("gw-test", KEY, 0)


async def test_a_start_for_another_call_ends_the_stream_unoffered(no_flush_timer: None) -> None:
    ws, nc = FakeSocket(), FakeNats()
    settings = GatewaySettings(twilio_auth_token="t", public_base_url="https://gw.example.com")
    ctx = StreamContext(nc, FakeJetStream(), FakeCallBook(RECORD), FakeLine(), settings, "gw-test")  # type: ignore[arg-type]
    task = asyncio.create_task(MediaStream(ws, ctx, RECORD).run())  # type: ignore[arg-type]
    ws.feed({**START, "start": {**START["start"], "callSid": "CA" + "7" * 32}})
    await asyncio.wait_for(task, WAIT_S)

    assert ws.closed_with == 1008
    assert nc.offers == [] and nc.out_subjects == []


async def test_a_silent_bridge_is_fenced_off_and_the_call_re_offered(no_flush_timer: None) -> None:
    call = await start_call(bridge_lease_s=0.2)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    await until(lambda: len(call.nc.offers) >= 2)  # no heartbeat ever comes: the lease runs out

    first, second = call.nc.offers
    assert (second.epoch, second.from_number) == (1, "+15551112222")
    assert second.stream_key != first.stream_key == KEY
    # The old bridge hears the call is no longer its own, on the old subject only.
    assert [(f.kind, f.json()) for f in call.nc.frames_in(KEY)] == [(Kind.STOP, {"reason": "bridge_replaced"})]
    assert call.calls.record.stream_key == second.stream_key
    assert call.nc.out_subjects[-1] == subjects.call_out(CALL, second.stream_key)
    # Frames of the fenced-off bridge are dropped; the new bridge's reach the caller.
    await call.nc.out_cb(FakeMsg(encode_frame(Kind.AUDIO, 0, 0, b"\x01" * 320), subjects.call_out(CALL, KEY)))
    assert call.ws.media() == []
    await call.audio(b"\x02" * 320)
    assert call.ws.media() == [b"\x02" * 320]
    assert [e["status"] for e in call.js.events] == ["bridge_lost"]
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


class SlowRekey(FakeCallBook):
    """A call book whose re-keying waits until the test lets it through."""

    def __init__(self, record: CallRecord) -> None:
        super().__init__(record)
        self.rekeying, self.release = asyncio.Event(), asyncio.Event()

    async def rekey(self, *args: Any) -> CallRecord | None:
        self.rekeying.set()
        await self.release.wait()
        return await super().rekey(*args)


async def test_a_fenced_bridge_is_not_heard_while_the_record_is_re_keyed(no_flush_timer: None) -> None:
    calls = SlowRekey(RECORD)
    call = await start_call(calls=calls, bridge_lease_s=0.2)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    await call.audio(b"\x01" * 160)  # 20 ms, held back for coalescing with what follows
    await asyncio.wait_for(calls.rekeying.wait(), WAIT_S)  # the lease ran out: fenced, not yet re-keyed
    await call.nc.out_cb(FakeMsg(encode_frame(Kind.AUDIO, 1, 0, b"\x01" * 320), subjects.call_out(CALL, KEY)))
    await call.nc.out_cb(FakeMsg(encode_control(Kind.MARK, 2, 0, {"name": "m1"}), subjects.call_out(CALL, KEY)))
    assert call.ws.media() == [] and "mark" not in call.events()
    calls.release.set()
    await until(lambda: len(call.nc.offers) >= 2)
    await call.audio(b"\x02" * 320)  # the new bridge's audio goes out alone
    assert call.ws.media() == [b"\x02" * 320]
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


def move_failures(call: Call) -> list[dict[str, Any]]:
    return [e for e in call.js.events if e.get("status") == "move_failed"]


async def test_a_move_twilio_never_acts_on_leaves_the_call_here_and_says_why(no_flush_timer: None) -> None:
    call = await start_call(move_wait_s=0.2)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    assert not await call.stream.move()  # Twilio took the TwiML but never stopped this stream
    assert len(call.line.moved) == 1
    assert call.calls.record.state == "streaming"  # the move was cancelled
    await until(lambda: move_failures(call))
    assert "did not stop" in move_failures(call)[0]["detail"]
    await call.audio(b"\x03" * 320)  # the call goes on here
    assert call.ws.media() == [b"\x03" * 320]
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)
    assert call.line.apologised == []


async def test_a_moved_call_no_new_stream_takes_is_apologised_for(no_flush_timer: None) -> None:
    call = await start_call(move_wait_s=0.3)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    moving = asyncio.create_task(call.stream.move())
    await until(lambda: call.line.moved)
    call.ws.feed({"event": "stop", "sequenceNumber": "9", "streamSid": STREAM, "stop": {"callSid": CALL}})
    assert await asyncio.wait_for(moving, WAIT_S)  # Twilio left this stream for the new one ...
    await asyncio.wait_for(call.task, WAIT_S)  # ... which never came
    assert call.line.apologised == [(CALL, "AC1")]
    await until(lambda: move_failures(call) and any(e["type"] == "call.ended" for e in call.js.events))
    assert "no new stream" in move_failures(call)[0]["detail"]
    [ended] = [e for e in call.js.events if e["type"] == "call.ended"]
    assert ended["reason"] == "move_failed"


async def test_a_call_the_balancer_sent_back_here_is_not_moved_again(no_flush_timer: None) -> None:
    """One gateway (compose on one machine): the moved call came back to the draining gateway it
    left. Moving it again would loop; it stays, and the session says why."""
    back = RECORD.model_copy(update={"moved_from": "gw-test", "moved_seq": 40, "moved_ts": 800, "moved_at": time.time()})
    call = await start_call(record=back, moved=True)
    [moved] = await call.nc.wait_for_frames_in(1)
    assert (moved.kind, moved.json()["from"], moved.json()["to"]) == (Kind.MOVED, "gw-test", "gw-test")
    assert not await call.stream.move()
    assert call.line.moved == []  # Twilio was not asked
    await until(lambda: move_failures(call))
    assert "came back" in move_failures(call)[0]["detail"]
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


async def test_heartbeats_keep_the_lease(no_flush_timer: None) -> None:
    call = await start_call(bridge_lease_s=0.2)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    for _ in range(12):  # 0.6 s, three leases long
        await call.out(encode_control(Kind.HEARTBEAT, 0, 0, {"bridge": "b1"}))
        await asyncio.sleep(0.05)

    assert len(call.nc.offers) == 1
    assert call.ws.sent == []  # a heartbeat is not sent to Twilio
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


async def test_no_bridge_at_all_gets_the_caller_an_apology(no_flush_timer: None) -> None:
    nc = FakeNats()
    nc.request = _never_answered  # type: ignore[method-assign]
    call = await start_call(nc, claim_deadline_s=0.3, claim_timeout_s=0.05)
    await until(lambda: call.line.apologised)

    assert call.line.apologised == [(CALL, "AC1")]
    await until(lambda: call.js.events)
    assert [(e["type"], e["reason"]) for e in call.js.events] == [("call.ended", "no_bridge")]
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


async def test_an_offer_the_queue_group_left_unanswered_goes_next_to_every_bridge(no_flush_timer: None) -> None:
    """A frozen bridge still holds its place in the queue group and draws its share of offers: after
    one goes unanswered, the call is offered to every bridge at once, and the one that takes it
    answers."""
    nc = FakeNats()
    asked: list[str] = []

    async def frozen_then_any(subject: str, payload: bytes, timeout: float) -> FakeMsg:  # noqa: ASYNC109
        asked.append(subject)
        if subject == subjects.CALL_OFFER:  # the group picked the frozen bridge
            return await _never_answered(subject, payload, timeout)
        nc.claimed.set()
        return FakeMsg(CallAnswer(call_id=CALL, accepted=True, bridge_id="b2", agent="support").model_dump_json().encode())

    nc.request = frozen_then_any  # type: ignore[method-assign]
    call = await start_call(nc, claim_timeout_s=0.05)
    await asyncio.wait_for(nc.claimed.wait(), WAIT_S)

    assert asked == [subjects.CALL_OFFER, subjects.CALL_OFFER_ANY]
    assert call.line.apologised == []
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)


async def until(condition: Callable[[], object]) -> None:
    """Poll the fakes (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - the fakes have no events to wait on
            await asyncio.sleep(0.02)


async def _never_answered(subject: str, payload: bytes, timeout: float) -> FakeMsg:  # noqa: ASYNC109
    import nats.errors

    await asyncio.sleep(timeout)
    raise nats.errors.TimeoutError


def _to_bridge() -> float:
    return metrics.REGISTRY.get_sample_value("dialtone_gateway_audio_frames_total", {"direction": "to_bridge"}) or 0.0


async def test_caller_audio_during_the_claim_reaches_the_bridge_in_order(call: Call) -> None:
    forwarded = _to_bridge()
    payloads = [bytes([i]) * 160 for i in range(5)]
    for i, p in enumerate(payloads[:3]):
        call.ws.feed(_media(i + 2, 20 * i, p))
    call.ws.feed({"event": "mark", "streamSid": STREAM, "sequenceNumber": "5", "mark": {"name": "probe-0"}})
    await call.ws.drained()
    assert call.nc.frames_in() == []  # no bridge yet: held back, not lost

    call.nc.answer.set()
    await call.nc.wait_for_frames_in(4)
    for i, p in enumerate(payloads[3:], start=3):
        call.ws.feed(_media(i + 3, 20 * i, p))
    call.ws.feed({"event": "dtmf", "streamSid": STREAM, "sequenceNumber": "9", "dtmf": {"track": "inbound_track", "digit": "#"}})
    call.ws.feed({"event": "stop", "streamSid": STREAM, "sequenceNumber": "10", "stop": {"accountSid": "AC1", "callSid": CALL}})
    await asyncio.wait_for(call.task, WAIT_S)

    frames = call.nc.frames_in()
    assert [f.kind for f in frames] == [Kind.AUDIO] * 3 + [Kind.MARK] + [Kind.AUDIO] * 2 + [Kind.DTMF, Kind.STOP]
    assert [f.seq for f in frames] == list(range(len(frames)))
    audio = [f for f in frames if f.kind is Kind.AUDIO]
    assert [f.payload for f in audio] == payloads
    assert [f.ts for f in audio] == [0, 20, 40, 60, 80]
    assert frames[3].json() == {"name": "probe-0"}
    assert frames[6].json() == {"digit": "#"}
    assert frames[7].json() == {"reason": "stop"}
    assert _to_bridge() - forwarded == 5  # audio frames only, those held back during the claim included
    assert call.nc.subscription.unsubscribed
    assert call.ws.closed_with == 1000


async def test_a_caller_who_hangs_up_before_the_claim_still_ends_the_call(call: Call) -> None:
    call.ws.feed(_media(2, 0, b"\xff" * 160))
    call.ws.feed({"event": "stop", "streamSid": STREAM, "sequenceNumber": "3", "stop": {}})
    await asyncio.wait_for(call.task, WAIT_S)

    # A bridge that claims late must still hear that the stream is over.
    assert [(f.kind, f.json()) for f in call.nc.frames_in()] == [(Kind.STOP, {"reason": "stop"})]


async def test_garbage_from_twilio_does_not_end_the_call(call: Call) -> None:
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    await call.ws.drained()
    call.ws.incoming.put_nowait({"type": "websocket.receive", "text": "{not json"})
    call.ws.incoming.put_nowait({"type": "websocket.receive", "bytes": b"\x00"})
    call.ws.feed({"event": "media", "media": {"payload": "!!"}})
    call.ws.feed(_media(2, 0, b"\xff" * 160))
    call.ws.feed({"event": "stop", "streamSid": STREAM, "sequenceNumber": "3", "stop": {}})
    await asyncio.wait_for(call.task, WAIT_S)

    assert [f.kind for f in call.nc.frames_in()] == [Kind.AUDIO, Kind.STOP]


async def test_a_call_that_ends_during_a_re_offer_is_not_offered_again(no_flush_timer: None) -> None:
    book = SlowRekey(RECORD)  # the KV store is slow to answer, and meanwhile the caller hangs up
    call = await start_call(calls=book, bridge_lease_s=0.2)
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    await until(lambda: call.js.events)  # bridge_lost: the re-offer began
    call.ws.hang_up()
    await asyncio.wait_for(call.task, WAIT_S)
    book.release.set()
    await asyncio.sleep(0.5)  # long enough for a leftover re-offer to show itself

    assert len(call.nc.offers) == 1
    assert book.record is not None and book.record.state == "ended"
    assert [e["status"] for e in call.js.events] == ["bridge_lost"]


async def test_caller_audio_is_dropped_not_hoarded_while_nats_is_down(call: Call) -> None:
    dropped = metrics.REGISTRY.get_sample_value("dialtone_gateway_frames_dropped_total", {"reason": "nats_disconnected"})
    call.nc.answer.set()
    await asyncio.wait_for(call.nc.claimed.wait(), WAIT_S)
    call.nc.is_connected = False
    for i in range(3):
        call.ws.feed(_media(i + 2, 20 * i, b"\xff" * 160))
    await call.ws.drained()
    call.nc.is_connected = True
    call.ws.feed(_media(9, 60, b"\x01" * 160))
    call.ws.feed({"event": "stop", "streamSid": STREAM, "sequenceNumber": "10", "stop": {}})
    await asyncio.wait_for(call.task, WAIT_S)

    assert [f.payload for f in call.nc.frames_in() if f.kind is Kind.AUDIO] == [b"\x01" * 160]
    assert metrics.REGISTRY.get_sample_value(
        "dialtone_gateway_frames_dropped_total", {"reason": "nats_disconnected"}) == (dropped or 0) + 3
