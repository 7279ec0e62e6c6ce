"""The fake Twilio REST API against the official twilio-python async client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from dialtone_sim.twilio_api import FakeTwilioApi
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

pytestmark = [
    pytest.mark.unit,
    # twilio-python 9.x's AsyncTwilioHttpClient passes aiohttp.BasicAuth, which aiohttp 3.14 deprecates;
    # the warning is the SDK's to fix and says nothing about the fake.
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

SID = "AC" + "0" * 32
TOKEN = "test-auth-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilioApi]:
    async with FakeTwilioApi(SID, TOKEN) as api:
        yield api


@pytest.fixture
async def client(fake: FakeTwilioApi, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    http = AsyncTwilioHttpClient()
    twilio = Client(SID, TOKEN, http_client=http)
    twilio.api.base_url = fake.base_url
    yield twilio
    await http.close()


async def test_create_update_fetch_with_the_official_client(fake: FakeTwilioApi, client: Client) -> None:
    call = await client.calls.create_async(
        to="+15005550001",
        from_="+15005550006",
        twiml="<Response><Say>hi</Say></Response>",
        status_callback="http://127.0.0.1:1/status",
        status_callback_event=["initiated", "answered", "completed"],
        machine_detection="DetectMessageEnd",
        async_amd="true",
    )
    assert call.sid.startswith("CA") and len(call.sid) == 34 and call.status == "queued"
    stored = fake.calls[call.sid]
    assert (stored.to, stored.from_, stored.machine_detection, stored.async_amd) == (
        "+15005550001",
        "+15005550006",
        "DetectMessageEnd",
        "true",
    )
    assert stored.status_callback_event == ["initiated", "answered", "completed"]
    assert fake.requests[0].method == "POST"
    assert fake.requests[0].path == f"/2010-04-01/Accounts/{SID}/Calls.json"

    dial = "<Response><Dial>+15005550099</Dial></Response>"
    redirected = await client.calls(call.sid).update_async(twiml=dial)
    assert redirected.sid == call.sid and stored.twiml == dial and not stored.hung_up

    ended = await client.calls(call.sid).update_async(status="completed")
    assert ended.status == "completed" and stored.hung_up
    assert [u for u in stored.updates] == [{"Twiml": dial}, {"Status": "completed"}]

    fetched = await client.calls(call.sid).fetch_async()
    assert fetched.status == "completed" and fetched.to == "+15005550001"


async def test_unknown_call_is_404_code_20404(client: Client) -> None:
    with pytest.raises(TwilioRestException) as raised:
        await client.calls("CA" + "f" * 32).update_async(status="completed")
    assert raised.value.status == 404 and raised.value.code == 20404


@pytest.mark.expect_sim_errors(r"twilio api: POST /2010-04-01/Accounts/AC0+/Calls.json: bad credentials \(401\)")
async def test_wrong_credentials_are_rejected(fake: FakeTwilioApi) -> None:
    http = AsyncTwilioHttpClient()
    try:
        twilio = Client(SID, "wrong-token", http_client=http)
        twilio.api.base_url = fake.base_url
        with pytest.raises(TwilioRestException) as raised:
            await twilio.calls.create_async(to="+1", from_="+2", twiml="<Response/>")
        assert raised.value.status == 401 and raised.value.code == 20003
    finally:
        await http.close()
    assert fake.calls == {}


async def test_status_callbacks_are_signed(fake: FakeTwilioApi, client: Client) -> None:
    received: list[dict[str, str]] = []

    async def status(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = f"http://127.0.0.1:{port}/status"
        if not RequestValidator(TOKEN).validate(url, form, request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        received.append(form)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        call = await client.calls.create_async(
            to="+15005550001",
            from_="+15005550006",
            url="http://x/voice",
            status_callback=f"http://127.0.0.1:{port}/status",
        )
        assert await fake.post_status(call.sid, "ringing") == 204
        assert await fake.post_status(call.sid, "in-progress", AnsweredBy="human") == 204
        assert await fake.post_status(call.sid, "completed") == 204

        fake.calls[call.sid].status_callback = f"http://127.0.0.1:{port}/status?tampered=1"
        assert await fake.post_status(call.sid, "completed") == 403  # URL differs from what is validated
    finally:
        await runner.cleanup()

    assert [f["CallStatus"] for f in received] == ["ringing", "in-progress", "completed"]
    assert [f["SequenceNumber"] for f in received] == ["0", "1", "2"]
    assert received[1]["AnsweredBy"] == "human" and "CallDuration" in received[2]
    assert all(f["CallSid"] == call.sid and f["AccountSid"] == SID for f in received)
    assert fake.calls[call.sid].answered_by == "human"
