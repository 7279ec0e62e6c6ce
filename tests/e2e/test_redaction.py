"""Acceptance of personal data kept out of storage, and of the audit log.

A simulated caller (real espeak-ng speech through the Twilio and Realtime simulators) on an agent
with ``redact = ["card_number", "email"]`` says a card number in words, then again in digit groups
with an email, then something harmless, and presses a key. Afterwards: no table of PostgreSQL holds
the card number, the email or the keypress in any form, the placeholders are there, search finds
nothing, and in the recording every sample of the two sensitive utterances is the beep while the
harmless one is exactly what the caller sent. Viewing and downloading that call are audited."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.audio import decode
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_edge import dial
from dialtone_writer.recorder_audio import BEEP, ULAW_TO_PCM

from .conftest import ACCOUNT_SID, AUTH_TOKEN, PRIVATE, Admin
from .test_recording import channels, fetch

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CARD_WORDS = "My card number is four one one one, one one one one, one one one one, one one one one."
CARD_DIGITS = "Again, it is 4111 1111 1111 1111, and my email is zelda.quill@example.com."
HARMLESS = "Thanks, that is all for today."
SCENARIO = Scenario(turns=[  # (the greeting is the agent's own, word for word: no turn of the script)
    Turn(caller=CARD_WORDS, agent="Thank you, I have noted your card."),
    Turn(caller=CARD_DIGITS, agent="Got it, your email is zelda dot quill at example dot com.",
         tools=[ToolCall("lookup_customer", {"phone": "4111-1111-1111-1111", "note": "zelda.quill@example.com"})]),
    Turn(caller=HARMLESS, agent="You are welcome. Thank you for calling Acme payments today, goodbye."),
], fallback_agent="You pressed a key.")
# Every form the values took: none may be stored anywhere.
SECRETS = ["4111111111111111", "4111 1111", "4111-1111", "one one one one", "zelda", "quill", "pressed 4"]


async def dump(database_url: str) -> dict[str, str]:
    """Every table of the database, each row as text."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {t: "\n".join(r[0] for r in await conn.fetch(f'SELECT t::text FROM "{t}" t')) for t in tables}
    finally:
        await conn.close()


async def test_card_numbers_and_emails_are_kept_out_of_storage_and_beeped_in_the_recording(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin, database_url: str
) -> None:
    realtime.scenario = SCENARIO
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_="+15005550004", to=PRIVATE)
    await call.wait_quiet(since=0, timeout=30)
    spoken: list[tuple[int, int]] = []
    for words in (CARD_WORDS, CARD_DIGITS, HARMLESS):
        start = len(call.sent_audio)
        await call.say(words)
        spoken.append((start, len(call.sent_audio)))
        await call.wait_quiet(timeout=30)
    await call.press("4")
    await call.wait_quiet(timeout=30)
    await call.hangup()
    sid = call.call_sid

    async def stored() -> bytes | None:
        status, body, _ = await fetch(admin, f"/sessions/{sid}/recording")
        return body if status == 200 else None

    wav = await poll(stored, 40, what="the recording")
    session = await admin.session(sid)

    # The transcript holds placeholders where the values were, the harmless line whole.
    texts = [line["text"] for line in session["transcript"] if line["role"] == "caller"]
    assert texts == ["My card number is [card number].", "Again, it is [card number], and my email is [email].",
                     HARMLESS, "pressed [keypad digit]"], texts
    agent = [line["text"] for line in session["transcript"] if line["role"] == "agent"]
    assert "Got it, your email is [email]." in agent
    [tool] = session["tool_calls"]
    assert tool["arguments"] == {"phone": "[card number]", "note": "[email]"}

    # Nowhere in PostgreSQL: every table's every row, as text.
    tables = await dump(database_url)
    assert "[card number]" in tables["transcript_lines"] and "[email]" in tables["call_events"]
    found = {(t, s) for t, text in tables.items() for s in SECRETS if s.lower() in text.lower()}
    assert not found, f"stored unredacted: {sorted(found)}"

    # Search finds nothing by the values (and the call by its placeholder words).
    for q in ("4111111111111111", "zelda", "quill", "example.com"):
        status, page = await admin.get("/sessions", q=q)
        assert status == 200 and sid not in [s["call_sid"] for s in page["items"]], q
    status, page = await admin.get("/sessions", q="card number")
    assert status == 200 and sid in [s["call_sid"] for s in page["items"]]

    # The recording, sample by sample: the two sensitive utterances are the beep from their first
    # voiced sample to their last; the harmless one is exactly what the caller sent.
    left, _ = channels(wav)
    sent = list(decode(bytes(call.sent_audio)))
    beep = [ULAW_TO_PCM[b] for b in BEEP]
    for start, end in spoken[:2]:
        voiced = [i for i in range(start, end) if sent[i] != 0]
        assert voiced, "the caller said nothing?"
        wrong = [i for i in range(voiced[0], voiced[-1] + 1) if left[i] != beep[i % len(beep)]]
        assert not wrong, f"{len(wrong)} samples of a redacted utterance are not the beep, first at {wrong[0] / 8000:.3f} s"
    start, end = spoken[2]
    assert any(sent[start:end]) and left[start:end] == sent[start:end], "the harmless utterance was altered"

    # Viewing and downloading are audited: the session read, the recording fetched, the transcript export.
    status, _, _ = await fetch(admin, f"/sessions/{sid}/transcript")
    assert status == 200
    status, audit = await admin.get("/audit/entries", call=sid)
    assert status == 200
    actions = [e["action"] for e in audit["items"]]
    assert {"view_call", "play_recording", "export_transcript"} <= set(actions), actions
    entry = next(e for e in audit["items"] if e["action"] == "export_transcript")
    assert entry["actor_kind"] == "token" and entry["actor"].startswith("token:")
    assert entry["client"] == "127.0.0.1" and entry["call_sid"] == sid
    assert admin.token not in str(audit)


async def test_a_dashboard_sign_in_is_named_in_the_audit_log_and_exports_are_audited(
    platform: Platform, admin: Admin
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(admin.url + "/auth/session", json={"token": admin.token}) as r:
            assert r.status in (200, 201, 204), await r.text()
        async with browser.get(admin.url + "/auth/sessions") as r:
            assert r.status == 200
            signins = (await r.json())["items"]
        async with browser.get(admin.url + "/sessions/export", params={"format": "json", "agent": "private"},
                               headers={"User-Agent": "audit-test-browser"}) as r:
            assert r.status == 200
            await r.read()
        async with browser.get(admin.url + "/sessions/CAnosuchcall00000000000000000000",
                               headers={"User-Agent": "audit-test-browser"}) as r:
            assert r.status == 404
    status, audit = await admin.get("/audit/entries", action="export_calls")
    assert status == 200
    mine = [e for e in audit["items"] if e["user_agent"] == "audit-test-browser"]
    assert mine, audit
    assert mine[0]["actor_kind"] == "session" and mine[0]["actor"] in {s["id"] for s in signins}
    assert mine[0]["detail"]["format"] == "json" and mine[0]["detail"]["filters"] == {"agent": "private"}
    # Asking for a call is audited even when there is none (someone looked).
    status, audit = await admin.get("/audit/entries", call="CAnosuchcall00000000000000000000")
    assert [e["action"] for e in audit["items"]] == ["view_call"]
    status, body = await admin.get("/audit/entries", cursor="not-a-cursor")
    assert status == 400
