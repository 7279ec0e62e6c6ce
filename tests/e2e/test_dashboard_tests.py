"""Acceptance: the dashboard's Tests page in Debian's headless Chromium. An operator starts a run
of an agent's scenario from the page; the request goes over the bus to a test worker, which
places the call through the real call path; the page shows the run's progress live, then the
failed run's expectations and a link to its call, which opens the call's page. The call is a
test call: its page says so with a badge linking back to its run, it is marked on its session and
left out of the overview."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from dialtone_dev.eval_worker import platform_worker
from dialtone_dev.platform import Platform
from dialtone_sim.live import LiveSimulator
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.twilio_edge import dial
from playwright.async_api import async_playwright, expect

from .conftest import ACCOUNT_SID, AUTH_TOKEN, BRIEF
from .test_dashboard_webhooks import _chromium

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# A scenario the support agent fails: it never promises a refund (the simulated model says so).
SCENARIO = """\
description: The caller is promised a refund on the spot.
caller:
  script:
    - say: I want my money back for order A1002.
    - hangup: true
expect:
  said: ["refund (is )?approved"]
  tools_not_called: [transfer_call]
model:
  turns:
    - caller: I want my money back for order A1002.
      agent: I understand. Refunds are handled by our billing team, who will call you back.
"""


async def _ordinary_call(platform: Platform) -> str:
    """A call that is no test: dialled, greeted, hung up, its session ended."""
    call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                      account_sid=ACCOUNT_SID, from_="+15005550123", to=BRIEF)  # fmt: skip
    await call.wait_quiet(since=0, timeout=20)
    await call.hangup()

    async def ended() -> bool:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {platform.admin_token}"}) as http:
            async with http.get(f"{platform.admin_url}/sessions/{call.call_sid}") as r:
                return r.status == 200 and bool((await r.json()).get("ended_at"))

    await poll(ended, 20, what="the ordinary call's session to end")
    return call.call_sid


async def test_an_operator_starts_a_run_watches_it_and_opens_the_failed_call(
    platform: Platform, realtime: RealtimeSimulator, live: LiveSimulator, tmp_path: Path
) -> None:
    chromium = _chromium()
    path = platform.agents_dir / "support" / "scenarios" / "ui_refund_promise.yaml"
    path.write_text(SCENARIO)
    try:
        async with platform_worker(platform, [realtime, live], None), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True)
            context = await browser.new_context(base_url=platform.admin_url, viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto("/tests")
            await page.fill("#token", platform.admin_token)
            await page.click("#login-form button")
            await page.wait_for_url("**/tests")
            await expect(page.locator('nav a[data-nav="tests"]')).to_have_attribute("aria-current", "page")

            # A run the worker refuses says why, on the page.
            await page.fill('#test-start input[name="agent"]', "nobody")
            await page.click("#test-start-button")
            await expect(page.locator("#test-note")).to_contain_text("no agent 'nobody'")

            await page.fill('#test-start input[name="agent"]', "support")
            await page.fill('#test-start input[name="scenario"]', "ui_refund_promise")
            await page.click("#test-start-button")
            await expect(page.locator("#test-note")).to_contain_text("started: 1 test call")
            run_id = re.search(r"Run (\S+) started", await page.locator("#test-note").inner_text()).group(1)
            row = page.locator(f'tr[data-run="{run_id}"]')
            # Live progress from the bus: running while the call goes on, then its verdict.
            await expect(row.locator(".run-status")).to_have_text("running", timeout=10_000)
            await expect(row.locator(".run-progress")).to_have_text("0/1 calls, 0 passed")
            await expect(row.locator(".run-status")).to_have_text("failed", timeout=60_000)
            await expect(row.locator(".run-progress")).to_have_text("1/1 calls, 0 passed")
            await expect(row).to_contain_text("simulated")  # no key: said on the run
            await row.get_by_role("button", name="Calls").click()
            call = page.locator('li[data-scenario="support/ui_refund_promise"]')
            await expect(call).to_contain_text("FAIL")
            await expect(call).to_contain_text("✗ said /refund (is )?approved/")
            await expect(call).to_contain_text("Refunds are handled by our billing team")  # what it said instead
            await expect(call).to_contain_text("✓ tool not called: transfer_call")
            history = page.locator("#test-history")
            await expect(history).to_contain_text("support/ui_refund_promise")
            await expect(history).to_contain_text("0%")
            await page.screenshot(path=str(Path(os.environ.get("DIALTONE_ARTIFACTS") or tmp_path) / "tests.png"))
            await call.locator("a.call-link").click()
            await page.wait_for_url(re.compile(r".*/calls/CA[0-9a-f]{32}$"))
            call_sid = page.url.rsplit("/", 1)[1]
            await expect(page.locator("#view")).to_contain_text("Refunds are handled by our billing team")
            # The call's page says it is a test call, with its run, which links back to the Tests page.
            badge = page.locator("#test-call-badge")
            await expect(badge).to_be_visible()
            await expect(badge.locator(".test-call")).to_have_text("test call")
            await expect(badge).to_contain_text(f"placed by test run {run_id}")
            await badge.locator("#test-run-link").click()
            await page.wait_for_url(f"**/tests?run={run_id}")
            focused = page.locator(f'tr[data-run="{run_id}"]')
            await expect(focused).to_have_attribute("aria-current", "true")
            await expect(focused.get_by_role("button", name="Calls")).to_have_attribute("aria-expanded", "true")
            await expect(page.locator('li[data-scenario="support/ui_refund_promise"]')).to_contain_text("FAIL")
            # An ordinary call's page has no such badge.
            await page.goto(f"/calls/{await _ordinary_call(platform)}")
            await expect(page.locator("#timeline")).to_be_visible()
            await expect(page.locator("#test-call-badge")).to_have_count(0)
            assert errors == []
            await browser.close()

        # The call is a test call: marked with its run, and out of the overview's counts.
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {platform.admin_token}"}) as http:
            async with http.get(f"{platform.admin_url}/sessions/{call_sid}") as r:
                assert (await r.json())["test_run"] == run_id
            day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            window = {"since": day.isoformat(), "until": (day + timedelta(days=1)).isoformat()}
            async with http.get(f"{platform.admin_url}/sessions/count", params={**window, "test": "only"}) as r:
                tests_today = (await r.json())["count"]
            async with http.get(f"{platform.admin_url}/sessions/count", params=window) as r:
                all_today = (await r.json())["count"]
            async with http.get(f"{platform.admin_url}/stats/daily", params=window) as r:
                (overview,) = (await r.json())["days"]
            assert tests_today >= 1 and overview["calls"] <= all_today - tests_today
    finally:
        path.unlink()
