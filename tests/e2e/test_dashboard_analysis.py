"""Acceptance: a call's post-call analysis as an operator sees it in Debian's headless Chromium: the
call page's Analysis card (summary, verdict, the extracted fields) and the calls list's verdict
filter. Without Chromium the test is skipped, except where ``DIALTONE_REQUIRE_CHROMIUM=1`` or
``CI`` is set."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_dev.platform import Platform
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.responses_api import ResponsesSimulator
from playwright.async_api import async_playwright, expect

from .conftest import Admin
from .test_analysis import analysed, call
from .test_dashboard_webhooks import _chromium

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def test_the_call_page_shows_the_analysis_and_the_list_filters_by_verdict(
    platform: Platform, realtime: RealtimeSimulator, responses_api: ResponsesSimulator, admin: Admin,
    tmp_path: Path,
) -> None:
    chromium = _chromium()
    # A simulator that answers at once and in full, whatever an earlier test of this worker set.
    responses_api.overrides.clear()
    responses_api.always_fail, responses_api.delay_s = None, 0.0
    responses_api._fail_next.clear()
    sid = await call(platform, realtime)
    analysis = (await analysed(admin, sid, timeout=60))["analysis"]
    success = analysis["verdict"]["success"]
    mine, other = ("success", "failure") if success else ("failure", "success")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        context = await browser.new_context(base_url=platform.admin_url, viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"/calls/{sid}")
        await page.fill("#token", platform.admin_token)
        await page.click("#login-form button")
        await page.wait_for_url(f"**/calls/{sid}")
        card = page.locator("#analysis")
        await expect(card).to_contain_text(analysis["summary"][:40])
        await expect(card).to_contain_text("Success" if success else "Failure")
        await expect(card).to_contain_text(str(analysis["fields"]["reason"])[:20])
        await page.screenshot(path=str(tmp_path / "analysis.png"), full_page=True)
        # The list, filtered by this call's verdict, has it; by the other verdict, not.
        await page.goto(f"/calls?verdict={mine}")
        await expect(page.locator(f'#rows a[href="/calls/{sid}"]')).to_have_count(1)
        await page.goto(f"/calls?verdict={other}")
        drawn = page.locator("#rows tr").or_(page.get_by_text("No calls match."))
        await expect(drawn.first).to_be_visible()  # the filtered list is drawn
        await expect(page.locator(f'#rows a[href="/calls/{sid}"]')).to_have_count(0)
        assert not errors, errors
        await browser.close()
