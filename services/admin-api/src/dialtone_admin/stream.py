"""Live calls pushed to the page with server-sent events, straight from NATS (no database polling).

- ``GET /live/stream``: calls in progress and their transcripts as people speak. One core NATS
  subscription per instance on the call events (``dt.v1.events.>``: the same messages JetStream
  stores) and the heartbeats feeds every browser; each browser has a bounded queue, and a browser
  too slow to drain it is disconnected (its ``EventSource`` reconnects and starts from a snapshot),
  so nothing a browser does reaches the bus or the calls.
- ``GET /live/{call_sid}/listen``: both sides of one call's audio, the raw mu-law frames of
  ``dt.v1.call.<sid>.*.in`` (caller) and ``.out`` (agent), base64 in SSE events, decoded to PCM by
  the page. Listening is a subscription of its own with a bounded pending limit: a slow listener
  loses frames (counted), the call never waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import nats.errors
import orjson
from dialtone_proto import events as ev
from dialtone_proto import subjects
from dialtone_proto.frames import FrameError, Kind, decode_frame
from dialtone_proto.live import LiveCall
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import StreamingResponse
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from dialtone_admin.audit import record
from dialtone_admin.auth import held, require_token
from dialtone_admin.errors import responses
from dialtone_admin.live import LiveCalls
from dialtone_admin.params import Text
from dialtone_admin.signins import CHECK_S, Held

log = logging.getLogger(__name__)

CLIENT_QUEUE = 512  # events a browser may have waiting before it is cut off
LINES_PER_CALL = 400  # lines of a live call kept for a browser that arrives mid-call
MAX_CALLS = 5000  # live calls whose lines are kept
KEEPALIVE_S = 15.0
LISTEN_QUEUE = 100  # audio frames (2 s of both sides) waiting for one listener
LISTEN_PENDING = 400  # frames the NATS client holds for the listener's subscription
SSE_HEADERS = {"X-Accel-Buffering": "no"}  # a proxy must pass each event on at once
_T = TypeVar("_T")


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class LiveHub:
    """Fans the bus's call events and heartbeats out to every connected browser.

    Args:
        live: the heartbeats' view of live calls (its snapshot starts each stream).
    """

    def __init__(self, live: LiveCalls) -> None:
        self._live = live
        self._lines: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()  # call -> item -> line
        self._started: dict[str, dict[str, Any]] = {}
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._subs: list[Subscription] = []
        live.listeners.append(self._on_heartbeat)

    async def start(self, nc: Client) -> None:
        self._subs.append(await nc.subscribe(subjects.EVENTS_ALL, cb=self._on_event, pending_msgs_limit=20_000))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for q in list(self._clients):
            self._close(q)

    def _close(self, q: asyncio.Queue[bytes | None]) -> None:
        self._clients.discard(q)
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(None)

    def _publish(self, event: str, data: Any) -> None:
        message = sse(event, data)
        for q in list(self._clients):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                # Too slow: cut it off rather than buffer without bound; it reconnects to a snapshot.
                self._clients.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(None)

    def _on_heartbeat(self, call: LiveCall, new: bool) -> None:
        if new:
            self._publish("call", _call_json(call))

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = ev.decode_event(msg.data)
        except ValidationError:
            return
        if isinstance(event, ev.CallStarted):
            info = {
                "call_id": event.call_id, "agent": event.agent, "from_number": event.from_number,
                "to_number": event.to_number, "direction": event.direction, "started_at": event.at.isoformat(),
                "state": "listening",
            }  # fmt: skip
            self._started[event.call_id] = info
            self._publish("call", info)
        elif isinstance(event, ev.TranscriptLine):
            line = _line_json(event)
            lines = self._lines.setdefault(event.call_id, {})
            self._lines.move_to_end(event.call_id)
            old = lines.get(event.item_id)
            if old is not None and old.get("rev", 0) > line.get("rev", 0):
                return  # an older publication of a corrected line
            lines[event.item_id] = line
            while len(lines) > LINES_PER_CALL:
                lines.pop(next(iter(lines)))
            while len(self._lines) > MAX_CALLS:
                self._lines.popitem(last=False)
            self._publish("line", line)
        elif isinstance(event, ev.CallEnded):
            self._lines.pop(event.call_id, None)
            self._started.pop(event.call_id, None)
            self._live.forget(event.call_id)
            self._publish("ended", {"call_id": event.call_id, "reason": event.reason})

    def snapshot(self) -> dict[str, Any]:
        calls = {c.call_id: _call_json(c) for c in self._live.snapshot()}
        for call_id, info in self._started.items():
            calls.setdefault(call_id, info)
        lines = [line for call_id in calls for line in self._lines.get(call_id, {}).values()]
        return {"calls": list(calls.values()), "lines": sorted(lines, key=lambda x: (x["call_id"], x["seq"]))}

    async def stream(self, signin: Held) -> AsyncIterator[bytes]:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        try:
            yield b"retry: 2000\n\n" + sse("snapshot", self.snapshot())
            async for message in _until_signed_out(q, signin, b": keepalive\n\n"):
                if message is None:
                    return
                yield message
        finally:
            self._clients.discard(q)


async def _until_signed_out(q: asyncio.Queue[_T], signin: Held, keepalive: _T) -> AsyncIterator[_T]:
    """The queue's items, and ``keepalive`` after KEEPALIVE_S without one, until the stream's
    sign-in ends: looked at before every item and at least every CHECK_S, so a sign-out or expiry
    ends the stream within about a second however busy or idle it is."""
    idle = 0.0
    while True:
        try:
            item = await asyncio.wait_for(q.get(), CHECK_S)
        except TimeoutError:
            if signin.ended():
                return
            idle += CHECK_S
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield keepalive
            continue
        if signin.ended():
            return
        idle = 0.0
        yield item


def _call_json(call: LiveCall) -> dict[str, Any]:
    return call.model_dump(mode="json", include={"call_id", "agent", "from_number", "to_number", "direction", "state", "started_at"})


def _line_json(line: ev.TranscriptLine) -> dict[str, Any]:
    out = line.model_dump(mode="json", exclude={"v", "type", "id"})
    return out


async def _listen(nc: Client, call_sid: str, signin: Held) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[tuple[str, int, bytes] | None] = asyncio.Queue(LISTEN_QUEUE)
    dropped = 0

    async def on_frame(msg: Msg) -> None:
        nonlocal dropped
        try:
            frame = decode_frame(msg.data)
        except FrameError:
            return
        if frame.kind != Kind.AUDIO or not frame.payload:
            return
        side = "in" if msg.subject.endswith(".in") else "out"
        try:
            queue.put_nowait((side, frame.seq, frame.payload))
        except asyncio.QueueFull:
            dropped += 1

    base = f"{subjects.PREFIX}.call.{call_sid}.*"
    subs = [
        await nc.subscribe(f"{base}.in", cb=on_frame, pending_msgs_limit=LISTEN_PENDING),
        await nc.subscribe(f"{base}.out", cb=on_frame, pending_msgs_limit=LISTEN_PENDING),
    ]
    try:
        # Subscribed at the server before the page hears "listening"; a server slow to answer the
        # ping delays that word by 2 s at most, never the audio (the subscriptions are sent).
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            await nc.flush(timeout=2)
        yield b"retry: 2000\n\n" + sse("listening", {"call_id": call_sid, "sample_rate": 8000, "encoding": "mulaw"})
        async for item in _until_signed_out(queue, signin, None):
            if item is None:
                yield b": keepalive\n\n"
                continue
            side, seq, payload = item
            yield sse("audio", {"side": side, "seq": seq, "audio": base64.b64encode(payload).decode(), "dropped": dropped})
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


router = APIRouter(dependencies=[Depends(require_token)], tags=["live"])


@router.get(
    "/live/stream",
    responses={**responses(401), 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def live_stream(request: Request) -> StreamingResponse:
    """Calls in progress and their transcripts, as server-sent events: ``snapshot`` first
    ({calls, lines}), then ``call`` (a call started or was first heard of), ``line`` (a transcript
    line, again with a higher ``rev`` when corrected) and ``ended`` ({call_id, reason})."""
    hub: LiveHub = request.app.state.hub
    return StreamingResponse(hub.stream(await held(request)), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/live/{call_sid}/listen",
    responses={**responses(400, 401, 503), 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def listen(call_sid: Annotated[Text, Path()], request: Request) -> StreamingResponse:
    """Listen in to a call in progress: ``audio`` events {side: in (caller) | out (agent), seq,
    audio: base64 mu-law at 8 kHz, dropped: frames this listener lost so far}."""
    try:
        subjects.check_call_id(call_sid)
    except subjects.InvalidCallId as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    nc: Client = request.app.state.nc
    signin = await held(request)
    await record(request, "listen_live", call_sid)
    return StreamingResponse(_listen(nc, call_sid, signin), media_type="text/event-stream", headers=SSE_HEADERS)
