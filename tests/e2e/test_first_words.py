"""First words: the model's session opens at the voice webhook, while Twilio sets up the stream,
so the caller waits for the slower of the two, not for one after the other. And a webhook whose
stream never comes leaves no session open."""

from __future__ import annotations

import time
from urllib.parse import urljoin

import aiohttp
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.live import LiveSimulator
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.twilio_edge import dial
from twilio.request_validator import RequestValidator

from .conftest import ACCOUNT_SID, AUTH_TOKEN, LIVE, metric

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CONNECT_DELAY_S = 1.5  # a real socket plus session.update
STREAM_DELAY_S = 0.5  # Twilio's set-up of the media stream after the webhook


async def test_the_session_opens_at_the_webhook_while_twilio_sets_up_the_stream(
    platform: Platform, realtime: RealtimeSimulator
) -> None:
    bridge_metrics = f"http://127.0.0.1:{platform.ports.bridge}/metrics"
    used = await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="used")
    realtime.connect_delay_s = CONNECT_DELAY_S
    before = len(realtime.sessions)
    try:
        webhook_at = time.monotonic()
        call = await dial(
            platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
            from_="+15005550001", to="+15005550006", stream_delay_s=STREAM_DELAY_S,
        )  # fmt: skip
        stream_at = time.monotonic()
        await call.wait_heard(200, timeout=30)  # the greeting begins
        await call.hangup()
    finally:
        realtime.connect_delay_s = 0.0
    session = realtime.sessions[before]
    first_words = call.media_received[0][0] - webhook_at
    print(f"webhook -> model socket opened {1000 * (session.opened_at - webhook_at):.0f} ms; stream started "
          f"{1000 * (stream_at - webhook_at):.0f} ms; first agent audio at the caller {1000 * first_words:.0f} ms "
          f"(connect {CONNECT_DELAY_S} s, stream set-up {STREAM_DELAY_S} s)")
    # The model's socket was opening before the caller's stream existed, and the call used it.
    assert session.opened_at < stream_at
    assert len(realtime.sessions) == before + 1  # one session for the call: the prepared one
    assert await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="used") == used + 1


async def test_a_webhook_whose_stream_never_comes_leaves_no_session_open(
    platform: Platform, realtime: RealtimeSimulator
) -> None:
    bridge_metrics = f"http://127.0.0.1:{platform.ports.bridge}/metrics"
    expired = await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="expired")
    before = len(realtime.sessions)
    params = {"CallSid": "CA" + "7" * 32, "AccountSid": ACCOUNT_SID, "From": "+15005550001", "To": "+15005550006",
              "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01"}  # fmt: skip
    url = urljoin(platform.public_base_url, "/twilio-voice")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    async with aiohttp.ClientSession() as http:
        async with http.post(platform.gateway_url + "/twilio-voice", data=params,
                             headers={"X-Twilio-Signature": signature}) as r:  # fmt: skip
            assert r.status == 200
    await poll(lambda: len(realtime.sessions) > before, 10, what="the prepared session to open")
    session = realtime.sessions[before]
    started = time.monotonic()
    await poll(lambda: session.closed.is_set(), 30, what="the unused session to be closed")
    print(f"unused prepared session closed {time.monotonic() - started:.1f} s after it opened "
          f"(PREPARE_TTL_S {platform.extra_env.get('PREPARE_TTL_S', '10')})")
    # (Other tests' webhooks without a stream, on this platform, may expire meanwhile too.)
    assert await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="expired") >= expired + 1


async def test_a_live_agents_session_starts_at_the_webhook_too(platform: Platform, live: LiveSimulator) -> None:
    """GPT-Live answers session.started about a second after session.start: on a live agent too,
    that wait runs while Twilio sets up the stream, not after it."""
    bridge_metrics = f"http://127.0.0.1:{platform.ports.bridge}/metrics"
    used = await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="used")
    live.start_delay_s = CONNECT_DELAY_S
    before = len(live.sessions)
    try:
        webhook_at = time.monotonic()
        call = await dial(
            platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
            from_="+15005550001", to=LIVE, stream_delay_s=STREAM_DELAY_S,
        )  # fmt: skip
        stream_at = time.monotonic()
        await call.wait_heard(200, timeout=30)  # the greeting begins
        await call.hangup()
    finally:
        live.start_delay_s = 0.05
    session = live.sessions[before]
    first_words = call.media_received[0][0] - webhook_at
    print(f"live: webhook -> session.start {1000 * (session.opened_at - webhook_at):.0f} ms; stream started "
          f"{1000 * (stream_at - webhook_at):.0f} ms; first agent audio at the caller {1000 * first_words:.0f} ms "
          f"(session.started after {CONNECT_DELAY_S} s, stream set-up {STREAM_DELAY_S} s)")
    assert session.opened_at < stream_at
    assert len(live.sessions) == before + 1
    assert await metric(bridge_metrics, "dialtone_bridge_prepared_sessions_total", result="used") == used + 1
