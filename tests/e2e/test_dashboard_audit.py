"""Acceptance: the dashboard's Audit page in Debian's headless Chromium: opening a call's page is
written to the audit log under the browser's sign-in, and the Audit page shows it."""

from __future__ import annotations

import uuid

import pytest
from dialtone_dev.platform import Platform
from playwright.async_api import async_playwright, expect

from .test_dashboard_webhooks import _chromium

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def test_the_audit_page_shows_who_opened_a_call(platform: Platform) -> None:
    chromium = _chromium()
    call = "CA" + uuid.uuid4().hex
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        context = await browser.new_context(base_url=platform.admin_url, viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"/calls/{call}")
        await page.fill("#token", platform.admin_token)
        await page.click("#login-form button")
        await page.wait_for_url(f"**/calls/{call}")
        await expect(page.locator("#view")).to_contain_text("There is no call")  # looked at, though there is none
        signins = await (await page.request.get("/auth/sessions")).json()
        await page.click('nav a[data-nav="audit"]')
        await page.wait_for_url("**/audit")
        await page.fill('#audit-filters input[name="call"]', call)
        await page.click("#audit-filters button[type=submit]")
        await page.wait_for_url(f"**/audit?call={call}")
        row = page.locator("#audit-rows tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("view_call")
        await expect(row).to_contain_text(call)
        await expect(row).to_contain_text("127.0.0.1")
        who = (await row.locator('td[data-label="Who"]').inner_text()).split()[-1]
        assert who in {s["id"] for s in signins["items"]}
        assert not errors, errors
        await browser.close()
