"""Acceptance of call recordings: the recording of a simulated call, checked sample by sample
against what the simulated caller sent (left) and what the Twilio simulator played (right), with a
barge-in, so nothing cleared may be in it; on both engines (a GPT-Live call is recorded the same)."""

from __future__ import annotations

import array

import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.audio import decode
from dialtone_sim.live import LiveSimulator
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.recording import channels
from dialtone_sim.recording import fetch as fetch_from
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_edge import dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, DESK, LAB, Admin, poll

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def fetch(admin: Admin, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    return await fetch_from(admin.url, admin.token, path, headers)


@pytest.mark.parametrize("engine", ["realtime", "live"])
async def test_the_recording_is_what_the_caller_said_and_heard(
    platform: Platform, realtime: RealtimeSimulator, live: LiveSimulator, admin: Admin, engine: str
) -> None:
    sim = realtime if engine == "realtime" else live
    sim.scenario = Scenario(turns=[Turn(caller="Sorry, one question.", agent="Of course, go ahead.")])
    before = len(sim.sessions)
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_="+15005550001", to=LAB if engine == "realtime" else DESK["live"],
                      one_way_delay_ms=30, stream_delay_s=0.3)  # fmt: skip  (Twilio takes >= 0.3 s to open it)
    await call.wait_heard(1500, timeout=20)  # the long greeting is playing: cut in
    await call.say("Sorry, one question.")
    await call.wait_quiet(timeout=20)
    await call.hangup()
    session = sim.sessions[before]
    if engine == "realtime":  # GPT-Live streams in real time: little is buffered to clear
        assert len(call.clears) == 1, "the barge-in must have cleared the greeting"

    async def stored() -> tuple[int, bytes, dict] | None:
        got = await fetch(admin, f"/sessions/{call.call_sid}/recording")
        return got if got[0] == 200 else None

    _, wav, headers = await poll(stored, 20, what="the recording")
    assert headers["Content-Type"] == "audio/wav" and headers["Accept-Ranges"] == "bytes"
    left, right = channels(wav)

    # Left: every sample the caller sent, where they sent it.
    sent = list(decode(bytes(call.sent_audio)))
    assert len(left) >= len(sent)
    assert left[: len(sent)] == sent, "the caller's channel differs from what the caller sent"
    assert not any(left[len(sent):])

    # Right: exactly what the caller heard, in the 20 ms it was heard, and silence elsewhere.
    expected = [0] * len(right)
    for frame, data in call.played:  # what the caller's ear played, in the 20 ms frame it played in
        assert frame * 160 + len(data) <= len(right), "the recording ends before the caller stopped hearing"
        expected[frame * 160: frame * 160 + len(data)] = decode(data)
    mismatched = [i for i, (a, b) in enumerate(zip(right, expected, strict=True)) if a != b]
    assert not mismatched, f"{len(mismatched)} agent samples differ, first at {mismatched[0] / 8000:.3f} s"

    if engine == "realtime":
        # Nothing of the cleared greeting after the clear: its next 100 ms appear nowhere on the right.
        greeting = bytes(session.output_audio[session.output_order[0]])
        heard = bytes(call.heard)
        start = heard.find(greeting[:1600])
        cut = call.clears[0][1] - start
        assert 0 < cut < len(greeting)
        rest = list(decode(greeting[cut + 160: cut + 960]))
        right_bytes = array.array("h", right).tobytes()
        assert array.array("h", rest).tobytes() not in right_bytes
    else:  # the greeting was cut off: the line says so, and the caller heard it stop
        _, detail = await admin.get(f"/sessions/{call.call_sid}")
        assert detail["transcript"][0]["interrupted"]

    # The session says it is whole, and the waveform has both sides.
    status, body = await admin.get(f"/sessions/{call.call_sid}/waveform", points=50)
    assert status == 200 and body["complete"] is True and body["reason"] is None, body.get("reason")
    assert body["points"] == 50 and max(body["caller"]) > 0.05 and max(body["agent"]) > 0.05
    async def said() -> dict | None:
        status, body = await admin.get(f"/sessions/{call.call_sid}")
        return body if status == 200 and "recording_complete" in body.get("metrics", {}) else None

    assert (await poll(said, 10, what="the session's recording metric"))["metrics"]["recording_complete"] == 1
    status, tail, headers = await fetch(admin, f"/sessions/{call.call_sid}/recording", {"Range": "bytes=-100"})
    assert status == 206 and tail == wav[-100:] and headers["Content-Range"] == f"bytes {len(wav) - 100}-{len(wav) - 1}/{len(wav)}"
