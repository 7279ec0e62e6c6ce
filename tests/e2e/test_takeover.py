"""Fault suite, scenarios 1 and 2: nobody can take over a call, and oversize or slow webhook
bodies are refused before anything parses them.

Every attempt is made against a live call, which must carry on unaffected: same caller number in
its session (the webhook's, not what a socket claims), every line heard and stored once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import xml.etree.ElementTree as ET

import aiohttp
import orjson
import psutil
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_edge import dial
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import ACCOUNT_SID, AUTH_TOKEN, Admin, metric, poll

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.asyncio(loop_scope="session")]

CALLER = "+15005550001"
SCENARIO = Scenario(turns=[
    Turn(caller="What are your opening hours?", agent="We are open nine to five, Monday to Friday."),
    Turn(caller="Thank you, goodbye.", agent="Goodbye!", tools=[ToolCall("set_outcome", {"outcome": "answered"})]),
])
MB = 1024 * 1024


def _ws(platform: Platform, stream_url: str) -> str:
    """Where the gateway really listens for a stream URL Twilio would use."""
    return stream_url.replace(platform.public_base_url.replace("http://", "ws://"),
                              platform.gateway_url.replace("http://", "ws://"))


def _sign(url: str, params: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, params or {})}


async def _webhook(platform: Platform, call_sid: str, from_: str = CALLER) -> str:
    """POST a signed voice webhook for ``call_sid``; return the TwiML's stream URL."""
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": from_, "To": "+15005550006",
            "CallStatus": "in-progress", "Direction": "inbound"}
    url = f"{platform.public_base_url}/twilio-voice"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{platform.gateway_url}/twilio-voice", data=form, headers=_sign(url, form)) as r:
            assert r.status == 200
            stream = ET.fromstring(await r.text()).find("./Connect/Stream")
    assert stream is not None
    return stream.get("url", "")


async def _refused(url: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=headers):
            pass
    return refused.value.response.status_code


def _start(call_sid: str, params: dict[str, str] | None = None) -> str:
    return orjson.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + secrets.token_hex(16),
                         "start": {"accountSid": ACCOUNT_SID, "streamSid": "MZ" + secrets.token_hex(16),
                                   "callSid": call_sid, "tracks": ["inbound"], "customParameters": params or {},
                                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                   "channels": 1}}}).decode()  # fmt: skip


async def test_a_live_call_cannot_be_taken_over(platform: Platform, realtime: RealtimeSimulator, admin: Admin):
    realtime.scenario = SCENARIO
    refused_url = f"{platform.gateway_url}/metrics"
    before = await metric(refused_url, "dialtone_gateway_sockets_refused_total")
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_=CALLER, to="+15005550006")
    await call.wait_quiet(800, since=0, timeout=40)  # the greeting
    sid = call.call_sid
    stream_url = await _webhook(platform, sid)  # the URL of the live call, as an attacker might learn it
    other = "CA" + secrets.token_hex(16)
    other_url = await _webhook(platform, other, from_="+15005550777")
    other_token = "/".join(other_url.rsplit("/", 2)[1:])  # <issued>/<token> of another call
    base = platform.public_base_url.replace("http://", "ws://") + "/media"
    attempts = {
        # The old scheme: one URL for every call, so one signature for every call.
        "bare /media, signed": await _refused(_ws(platform, base), _sign(base)),
        # The live call's own URL and signature, replayed: the call already has its stream.
        "replayed upgrade": await _refused(_ws(platform, stream_url), _sign(stream_url)),
        # A token made up for the live CallSid (even with a valid signature for that URL).
        "forged token": await _refused(
            _ws(platform, f"{base}/{sid}/{int(time.time())}/{'A' * 22}"), _sign(f"{base}/{sid}/{int(time.time())}/{'A' * 22}")
        ),
        # Another call's token for the live CallSid.
        "another call's token": await _refused(
            _ws(platform, f"{base}/{sid}/{other_token}"), _sign(f"{base}/{sid}/{other_token}")
        ),
    }
    assert attempts == dict.fromkeys(attempts, 403), attempts
    assert await metric(refused_url, "dialtone_gateway_sockets_refused_total") >= before + len(attempts)

    # A legitimate stream of another call cannot start the live one: a start naming it ends the socket.
    async with connect(_ws(platform, other_url), additional_headers=_sign(other_url)) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send(_start(sid, {"from": "+15005550001"}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008

    # The real call never noticed: it talks on, hangs up, and its session is whole and its own.
    heard = len(call.heard)
    await call.say("What are your opening hours?")
    await call.wait_quiet(800, timeout=40)
    await call.say("Thank you, goodbye.")
    await call.wait_quiet(800, timeout=40)
    await call.hangup()
    assert len(call.heard) > heard and not call.closed_by_server
    session = await admin.session(sid)
    assert [line["role"] for line in session["transcript"]] == ["agent", "caller", "agent", "caller", "agent"]
    assert session["from_number"] == CALLER and session["outcome"] == "answered"
    assert session["end_reason"] == "caller_hangup"


async def test_spoofed_custom_parameters_do_not_change_who_called(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = SCENARIO
    sid = "CA" + secrets.token_hex(16)
    stream_url = await _webhook(platform, sid, from_="+15005550123")
    spoofed = {"from": "+15005550001", "to": "+15005550096", "agent": "lab", "v_customer": "someone-else"}
    async with connect(_ws(platform, stream_url), additional_headers=_sign(stream_url)) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send(_start(sid, spoofed))

        async def started() -> bool:
            status, body = await admin.get(f"/sessions/{sid}")
            return status == 200 and body.get("agent") is not None

        await poll(started, 20, what="the call to start")
        await ws.send(orjson.dumps({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1",
                                    "stop": {"accountSid": ACCOUNT_SID, "callSid": sid}}).decode())
    session = await admin.session(sid)
    assert session["from_number"] == "+15005550123"  # the signed webhook's number
    assert session["to_number"] == "+15005550006" and session["agent"] != "lab"


async def _raw_post(port: int, head: str, body_chunks, *, delay: float = 0.0) -> tuple[int | str, int]:
    """Send a request over a raw socket; return (HTTP status, body bytes sent before the answer).

    A server that answers without reading a body closes the connection with the body unread, and
    the kernel then resets it: the answer may be lost to the client, so "reset" is a refusal too
    (the gateway's metric says which answer it gave)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(head.encode())
        answer = asyncio.ensure_future(reader.readline())
        for chunk in body_chunks:
            if answer.done():
                break
            try:
                writer.write(chunk)
                await writer.drain()
            except (ConnectionError, OSError):
                break
            sent += len(chunk)
            if delay:
                await asyncio.sleep(delay)
        try:
            line = await asyncio.wait_for(answer, 30)
        except ConnectionError:
            return "reset", sent
        return (int(line.split()[1]) if line.startswith(b"HTTP/1.1") else "closed"), sent
    finally:
        writer.close()


def _head(path: str, length: int | None) -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Twilio-Signature: forged\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{size}\r\n")


def _chunked(total: int, size: int = 256 * 1024):
    piece = b"A=" + b"x" * (size - 2)
    for _ in range(total // size):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def _plain(total: int, size: int = 256 * 1024):
    piece = b"x" * size
    for _ in range(total // size):
        yield piece


async def test_oversize_and_slow_webhook_bodies_are_refused_unread(platform: Platform, realtime: RealtimeSimulator):
    realtime.scenario = SCENARIO
    port = platform.ports.gateway
    gateway = psutil.Process(platform.services["media-gateway"].pid)
    idle = gateway.memory_info().rss
    figures: dict[str, object] = {}
    metrics_url = f"{platform.gateway_url}/metrics"

    async def refusals(reason: str) -> float:
        return await metric(metrics_url, "dialtone_gateway_webhooks_total", result=reason)

    too_large, too_slow = await refusals("too_large"), await refusals("too_slow")

    # Five 200 MB posts declaring their size: refused from the header, at once.
    started = time.monotonic()
    results = await asyncio.gather(*(_raw_post(port, _head(path, 200 * MB), _plain(200 * MB))
                                     for path in ["/twilio-voice", "/twilio-status"] * 2 + ["/twilio-voice"]))
    figures["declared 200 MB x5"] = (results, round(time.monotonic() - started, 2))
    assert all(status in (413, "reset") for status, _ in results), results
    assert await refusals("too_large") == too_large + 5
    # Five 200 MB chunked posts (no declared size): cut off a little past the limit.
    results = await asyncio.gather(*(_raw_post(port, _head("/twilio-voice", None), _chunked(200 * MB))
                                     for _ in range(5)))
    figures["chunked 200 MB x5"] = results
    assert all(status in (413, "reset") for status, _ in results), results
    assert await refusals("too_large") == too_large + 10
    assert all(sent < 20 * MB for _, sent in results), results  # the gateway stopped reading early
    # Three bodies that trickle in (slowloris): refused when the read deadline passes.
    results = await asyncio.gather(*(_raw_post(port, _head("/twilio-voice", 2000), (b"x" * 10 for _ in range(200)),
                                               delay=0.5) for _ in range(3)))
    figures["slow body x3"] = results
    assert all(status in (408, "reset") for status, _ in results), results
    assert await refusals("too_slow") == too_slow + 3
    # A form of many tiny fields, under the size limit: refused before the signature check.
    many = "&".join(f"f{i}=1" for i in range(5000)).encode()
    status, _ = await _raw_post(port, _head("/twilio-voice", len(many)), [many])
    assert status == 400

    peak_growth = (gateway.memory_info().rss - idle) / MB
    figures["RSS idle MB"], figures["RSS growth MB"] = round(idle / MB, 1), round(peak_growth, 1)
    print("webhook abuse figures:", figures)
    assert peak_growth < 50, figures
    # And the gateway still answers a real call.
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_=CALLER, to="+15005550006")
    await call.wait_quiet(800, since=0, timeout=40)
    await call.hangup()
    assert len(call.heard) > 0
