"""Acceptance: the dashboard's Webhooks page in Debian's headless Chromium: the deliveries with
their attempts, and Resend from the page with the session cookie (the server checks the request
comes from its own page). Without Chromium the test is skipped, except where
``DIALTONE_REQUIRE_CHROMIUM=1`` or ``CI`` is set."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from dialtone_dev.platform import Platform
from playwright.async_api import async_playwright, expect

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    message = f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium"
    if os.environ.get("DIALTONE_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def test_the_webhooks_page_lists_deliveries_and_resends_one(platform: Platform, tmp_path: Path) -> None:
    chromium = _chromium()
    call, endpoint, did = "CA" + uuid.uuid4().hex, f"page-{uuid.uuid4().hex[:6]}", "msg_" + uuid.uuid4().hex
    at = datetime.now(UTC) - timedelta(hours=1)
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, endpoint, url, event_id, event_type, call_sid, event_at, status,"
            " attempts, last_status, last_error) VALUES ($1, $2, 'http://127.0.0.1:9/nowhere', $3, 'call.ended', $4,"
            " $5, 'dead', 2, 410, 'HTTP 410')",
            did, endpoint, f"{call}-9", call, at,
        )
        await conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, n, at, status_code, latency_ms, response, error) VALUES"
            " ($1, 1, $2, 503, 20.0, 'busy', 'HTTP 503'), ($1, 2, $2, 410, 15.0, 'gone for good', 'HTTP 410')",
            did, at,
        )
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True)
            context = await browser.new_context(base_url=platform.admin_url, viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"/webhooks?endpoint={endpoint}")
            await page.fill("#token", platform.admin_token)
            await page.click("#login-form button")
            await page.wait_for_url(f"**/webhooks?endpoint={endpoint}")
            row = page.locator(f'tr[data-delivery="{did}"]')
            await expect(row).to_contain_text("call.ended")
            await expect(row).to_contain_text("dead")
            await expect(row).to_contain_text("HTTP 410")
            await expect(page.locator('nav a[data-nav="webhooks"]')).to_have_attribute("aria-current", "page")
            await row.get_by_role("button", name="2 attempts").click()  # the attempts
            await expect(page.locator("tr.attempts").first).to_contain_text("gone for good")
            await page.screenshot(path=str(Path(os.environ.get("DIALTONE_ARTIFACTS") or tmp_path) / "webhooks.png"))
            await row.get_by_role("button", name="Resend").click()
            await expect(row).to_contain_text("resent")
            assert await conn.fetchval("SELECT status FROM webhook_deliveries WHERE id = $1", did) == "pending"
            assert errors == []
            await browser.close()
    finally:
        # Pointed nowhere: take it out of the queue so no writer tries it.
        await conn.execute("UPDATE webhook_deliveries SET status = 'dead' WHERE id = $1", did)
        await conn.close()
