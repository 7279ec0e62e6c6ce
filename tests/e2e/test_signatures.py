"""Acceptance: Twilio signatures are checked on the webhook and on the media socket upgrade."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from dialtone_dev.platform import Platform
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import AUTH_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FORM = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+15005550001",
        "To": "+15005550006", "CallStatus": "ringing", "Direction": "inbound"}


async def post_voice(platform: Platform, signature: str | None, form: dict[str, str] = FORM) -> tuple[int, str]:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{platform.gateway_url}/twilio-voice", data=form, headers=headers) as r:
            return r.status, await r.text()


async def test_webhook_requires_a_valid_signature(platform: Platform):
    url = f"{platform.public_base_url}/twilio-voice"
    good = RequestValidator(AUTH_TOKEN).compute_signature(url, FORM)
    wrong = RequestValidator("not-the-token").compute_signature(url, FORM)

    assert (await post_voice(platform, None))[0] == 403
    assert (await post_voice(platform, wrong))[0] == 403
    status, twiml = await post_voice(platform, good)
    assert status == 200
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url", "").startswith(platform.public_base_url.replace("http://", "ws://") + f"/media/{FORM['CallSid']}/")
    assert stream.findall("Parameter") == []  # the caller's number is not handed to the socket to echo


async def test_media_socket_upgrade_requires_a_valid_signature(platform: Platform):
    form = FORM | {"CallSid": "CA" + "3" * 32}
    url = f"{platform.public_base_url}/twilio-voice"
    _, twiml = await post_voice(platform, RequestValidator(AUTH_TOKEN).compute_signature(url, form), form)
    stream_url = ET.fromstring(twiml).find("./Connect/Stream").get("url")  # type: ignore[union-attr]
    ws_url = stream_url.replace(platform.public_base_url.replace("http://", "ws://"),
                                platform.gateway_url.replace("http://", "ws://"))
    for headers in ({}, {"X-Twilio-Signature": RequestValidator("wrong").compute_signature(stream_url, {})}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
    good = RequestValidator(AUTH_TOKEN).compute_signature(stream_url, {})
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": good}) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    # That upgrade held the call's stream: the same signed upgrade again is refused.
    with pytest.raises(InvalidStatus) as replayed:
        async with connect(ws_url, additional_headers={"X-Twilio-Signature": good}):
            pass
    assert replayed.value.response.status_code == 403


async def test_a_move_url_cannot_take_a_call_that_is_not_moving_under_it(platform: Platform):
    """A correctly signed move URL (anyone holding the auth token could make one) still opens no
    stream unless the call's record is moving under that very move id."""
    from dialtone_gateway.signatures import SignatureChecker

    form = FORM | {"CallSid": "CA" + "4" * 32}
    url = f"{platform.public_base_url}/twilio-voice"
    _, twiml = await post_voice(platform, RequestValidator(AUTH_TOKEN).compute_signature(url, form), form)
    stream_base = platform.public_base_url.replace("http://", "ws://") + "/media"
    checker = SignatureChecker(AUTH_TOKEN, platform.public_base_url, stream_base)
    path = checker.stream_path(form["CallSid"], int(time.time()), "m" * 22)
    stream_url = f"{stream_base}/{path}"
    ws_url = stream_url.replace(platform.public_base_url.replace("http://", "ws://"),
                                platform.gateway_url.replace("http://", "ws://"))
    signed = {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(stream_url, {})}
    with pytest.raises(InvalidStatus) as refused:  # the call is pending, not moving
        async with connect(ws_url, additional_headers=signed):
            pass
    assert refused.value.response.status_code == 403
