"""Acceptance: the dashboard as an operator uses it, in Debian's headless Chromium (Playwright from
PyPI, never ``playwright install``), against the running platform with simulated calls.

One test walks the whole path on one browser, so the platform and the browser start once: sign in;
find a call by a phrase said in it; filters and the timezone shown; open the call by its URL and
see its transcript and waveform; click a line and see the audio's time move there; download the
transcript and the recording; watch a live call appear and its transcript grow; listen in (audio
frames arrive); the 390 px layout without horizontal overflow; sign out (and out everywhere), after which no call data
is in the DOM. Screenshots go to ``$DIALTONE_ARTIFACTS`` (else the test's tmp dir). Without
Chromium the test is skipped, except where ``DIALTONE_REQUIRE_CHROMIUM=1`` or ``CI`` is set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_edge import dial
from playwright.async_api import Page, async_playwright, expect

from .conftest import ACCOUNT_SID, AUTH_TOKEN, LAB, Admin

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CHROMIUM = "/usr/bin/chromium"
TZ = "America/New_York"
CALLER = "+15005550177"
LIVE_CALLER = "+15005550178"
PHRASE = "purple elephant parking permit"
SCENARIO = Scenario(turns=[
    Turn(caller=f"I need a {PHRASE} for Tuesday", agent="I can help with the parking permit."),
    Turn(caller="Thank you, that is all.", agent="Goodbye!"),
])  # fmt: skip
LIVE_SCENARIO = Scenario(turns=[
    Turn(caller="First live sentence about tangerines", agent="Tangerines noted."),
    Turn(caller="Second live sentence about kumquats", agent="Kumquats noted too."),
    Turn(caller="Third live sentence about quinces", agent="Quinces as well."),
])  # fmt: skip


def _chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    message = f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium"
    if os.environ.get("DIALTONE_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def _call(platform: Platform, caller: str, lines: list[str], pause: float = 0.0):
    call = await dial(
        platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url, account_sid=ACCOUNT_SID,
        from_=caller, to=LAB,
    )  # fmt: skip
    await call.wait_quiet(since=0, timeout=30)
    for line in lines:
        await call.say(line)
        await call.wait_quiet(timeout=30)
        await asyncio.sleep(pause)
    return call


async def _has_recording(admin: Admin, sid: str) -> bool:
    return (await admin.get(f"/sessions/{sid}/waveform"))[0] == 200


async def _no_overflow(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{page.url} is {width} px wide at 390 px"


async def test_dashboard_as_an_operator_uses_it(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin, tmp_path: Path
) -> None:
    chromium = _chromium()
    shots = Path(os.environ.get("DIALTONE_ARTIFACTS") or tmp_path) / "dashboard-pages"
    shots.mkdir(parents=True, exist_ok=True)
    realtime.scenario = SCENARIO
    done = await _call(platform, CALLER, [t.caller for t in SCENARIO.turns])
    await done.hangup()
    session = await admin.session(done.call_sid)
    sid = session["call_sid"]
    base = platform.admin_url

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--autoplay-policy=no-user-gesture-required"])
        context = await browser.new_context(
            timezone_id=TZ, viewport={"width": 1280, "height": 900}, accept_downloads=True, base_url=base,
        )  # fmt: skip
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)

        # Signed out, a page redirects to the sign-in, which remembers where the operator was going.
        await page.goto(f"/calls/{sid}")
        assert re.search(r"/login\?next=%2Fcalls%2F" + sid, page.url)
        await page.fill("#token", "not the token")
        await page.click("#login-form button")
        await expect(page.locator("#login-error")).to_contain_text("not the admin token")
        await page.fill("#token", platform.admin_token)
        await page.click("#login-form button")
        await page.wait_for_url(f"**/calls/{sid}")
        cookies = await context.cookies()
        (cookie,) = [c for c in cookies if c["name"] == "dialtone_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # no script can read it

        # The call, by its URL: facts, transcript, waveform (or the page saying there is none).
        await expect(page.locator("#timeline")).to_contain_text(PHRASE)
        await expect(page.locator("#timeline")).to_contain_text("I can help with the parking permit.")
        facts = await page.locator("dl").first.inner_text()
        assert "inbound" in facts and CALLER in facts and "Direction" in facts
        # Turn latency by stage, a row per caller turn, as the session has it: from the caller's
        # stop to the model's first audio received, sent towards Twilio, heard; and the platform's
        # own share (sent - received).
        turns = session["turns"]
        assert turns and all(t["received_ms"] is not None and t["heard_ms"] is not None for t in turns), turns
        rows = page.locator("table.turns tbody tr")
        await expect(rows).to_have_count(len(turns))
        shown = lambda v: f"{math.floor(v + 0.5)} ms"  # noqa: E731 - as the page's Math.round
        for i, t in enumerate(turns):
            cells = await rows.nth(i).locator("td").all_inner_texts()
            assert cells[1:5] == [shown(t["received_ms"]), shown(t["sent_ms"]),
                                  shown(t["sent_ms"] - t["received_ms"]), shown(t["heard_ms"])], cells
        # The recorder stores the WAV once the call has ended: then the page draws it.
        await poll(lambda: _has_recording(admin, sid), 20, what="the call's recording")
        await page.reload()
        await expect(page.locator("#wave-status")).to_contain_text("Caller above, agent below", timeout=10_000)
        await expect(page.locator("#wave")).to_be_visible()
        await expect(page.locator("#play")).to_be_enabled(timeout=10_000)
        lines = page.locator("#timeline button[data-offset]")
        target = lines.nth(await lines.count() - 1)
        offset = float(await target.get_attribute("data-offset"))
        await target.click()
        await expect(page.locator("#player")).to_have_attribute("data-time", re.compile(r"\d"))
        moved = float(await page.locator("#player").get_attribute("data-time"))
        assert abs(moved - offset) < 0.3, (moved, offset)
        await expect(target).to_have_class(re.compile("playing"))
        # By keyboard: Tab reaches the first line (a button), Enter seeks the audio there.
        first = lines.nth(0)
        start = float(await first.get_attribute("data-offset"))
        await page.locator("#play").focus()
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await first.evaluate("node => node === document.activeElement"):
                break
        else:
            raise AssertionError("Tab never reached the first line of the timeline")
        await page.keyboard.press("Enter")
        await expect(first).to_have_class(re.compile("playing"))
        assert abs(float(await page.locator("#player").get_attribute("data-time")) - start) < 0.3
        async with page.expect_download() as wav:
            await page.click("#download-recording")
        assert (await (await wav.value).path()).read_bytes()[:4] == b"RIFF"
        async with page.expect_download() as download:
            await page.click("#download-transcript")
        saved = json.loads((await (await download.value).path()).read_text())
        assert saved["call_sid"] == sid and any(PHRASE in line["text"] for line in saved["transcript"])
        await page.screenshot(path=str(shots / "call.png"), full_page=True)

        # Back goes to where the operator came from; the list, with the timezone shown.
        await page.click("#back")
        await page.wait_for_url("**/calls")
        await expect(page.locator("#tz")).to_have_text(f"Times in {TZ}")
        await expect(page.locator("#rows tr").first).to_be_visible()
        await page.go_back()
        await page.wait_for_url(f"**/calls/{sid}")
        await expect(page.locator("#timeline")).to_contain_text(PHRASE)
        await page.go_forward()

        # Find the call by what was said, with filters whose choices come from the data.
        await page.fill("input[name=q]", "ELEPHANT permit")
        await page.select_option("select[name=agent]", "lab")
        await page.select_option("select[name=direction]", "inbound")
        today = datetime.now(ZoneInfo(TZ)).date().isoformat()
        await page.fill("input[name=since]", today)
        await page.fill("input[name=until]", today)
        async with page.expect_request(lambda r: r.url.startswith(f"{base}/sessions?")) as listed:
            await page.click("#filters button[type=submit]")
        sent = (await listed.value).url
        # The day starts at the operator's midnight, not UTC's.
        midnight = datetime.fromisoformat(today).replace(tzinfo=ZoneInfo(TZ))
        since = midnight.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H")
        assert f"since={since}" in sent.replace("%3A", ":"), sent
        await expect(page.locator(f'#rows tr[data-sid="{sid}"]')).to_be_visible()
        await expect(page.locator("#rows tr")).to_have_count(1)
        await expect(page.locator("#total")).to_have_text("1 call")
        await expect(page.locator(f'#rows tr[data-sid="{sid}"] td.outcome')).to_have_text(session["outcome"] or "")
        assert "q=ELEPHANT+permit" in page.url and "agent=lab" in page.url  # the filters are in the URL
        await page.reload()
        await expect(page.locator(f'#rows tr[data-sid="{sid}"]')).to_be_visible()
        async with page.expect_download() as csv_download:
            await page.click("#export-csv")
        csv = (await (await csv_download.value).path()).read_text()
        assert csv.startswith("call_sid,") and sid in csv and len(csv.strip().splitlines()) == 2
        await page.screenshot(path=str(shots / "calls.png"), full_page=True)
        await page.click(f'#rows tr[data-sid="{sid}"] a')
        await page.wait_for_url(f"**/calls/{sid}")

        # Phone width: nothing wider than the screen, on the list and on the call.
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(page.locator("#timeline")).to_contain_text(PHRASE)
        await _no_overflow(page)
        await page.screenshot(path=str(shots / "call-390.png"), full_page=True)
        await page.goto("/calls")
        await expect(page.locator("#rows tr").first).to_be_visible()
        await _no_overflow(page)
        await page.screenshot(path=str(shots / "calls-390.png"), full_page=True)
        await page.set_viewport_size({"width": 1280, "height": 900})

        # Live: a call appears as it starts, its transcript grows as people speak; listen in.
        await page.goto("/monitor")
        await expect(page.locator("#live-status")).not_to_have_text("Connecting…")
        realtime.scenario = LIVE_SCENARIO
        live = asyncio.create_task(_call(platform, LIVE_CALLER, [t.caller for t in LIVE_SCENARIO.turns], pause=1.0))
        try:
            card = page.locator(f'article.live-call:has-text("{LIVE_CALLER}")')
            await expect(card).to_be_visible(timeout=20_000)
            await card.locator("button.listen").click()
            await expect(card).to_contain_text("tangerines", timeout=20_000)
            first = await card.locator("li.line").count()
            await expect(card).to_contain_text("kumquats", timeout=20_000)
            assert await card.locator("li.line").count() > first
            await expect(card).to_have_attribute("data-frames", re.compile(r"^[1-9]\d*$"), timeout=10_000)
            await page.screenshot(path=str(shots / "live.png"), full_page=True)
            call = await live
            await call.hangup()
            await expect(card).to_have_count(0, timeout=20_000)  # it leaves when it ends
        finally:
            if not live.done():
                live.cancel()
                with contextlib.suppress(BaseException):
                    await live

        # Overview: charts drawn from the data.
        await page.goto("/overview")
        await expect(page.locator(".charts .uplot").first).to_be_visible()
        await page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # Sign out: no call data is left in the DOM, and the pages and API refuse the old session.
        await page.goto(f"/calls/{sid}")
        await expect(page.locator("#timeline")).to_contain_text(PHRASE)
        await page.click("#logout")
        await page.wait_for_url("**/login**")
        html = await page.content()
        for secret in (sid, CALLER, PHRASE, "parking"):
            assert secret not in html, secret
        await expect(page.locator("#token")).to_be_visible()
        response = await page.request.get(f"/sessions/{sid}")
        assert response.status == 401
        await page.goto("/calls")
        assert "/login" in page.url
        # Sign out everywhere: another browser's session ends with this one's, its API refused.
        other = await browser.new_context(base_url=base)
        other_page = await other.new_page()
        for signing_in in (page, other_page):
            await signing_in.goto("/login")
            await signing_in.fill("#token", platform.admin_token)
            await signing_in.click("#login-form button")
            await signing_in.wait_for_url("**/calls")
        assert (await other_page.request.get("/sessions?limit=1")).status == 200
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#logout-all")
        await page.wait_for_url("**/login**")
        await expect(page.locator("#view")).to_contain_text("Every session has been signed out")
        assert (await other_page.request.get("/sessions?limit=1")).status == 401
        await other.close()
        await page.screenshot(path=str(shots / "signed-out.png"), full_page=True)
        assert not [e for e in errors if "Failed to load resource" not in e], errors
        await browser.close()
