"""The pages in a real headless Chromium, as applicants use them."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pyotp

from harness.matrix_user import MatrixUser
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import BOT, admin_room, new_applicant, request_id_of, web_url

NEW_PASSWORD = "a brand new passphrase 5"
# Set to a folder (e.g. docs/screenshots) to keep the story's screenshots for the README.
SCREENSHOTS = os.environ.get("GATEKEEPER_SCREENSHOTS")


def link(mail: Any, path: str) -> str:
    match = re.search(rf"https?://\S+/{path}\?token=[A-Za-z0-9_-]+", mail.get_content())
    assert match, f"no {path} link in the mail"
    return match.group(0)


async def snapshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=f"{SCREENSHOTS}/{name}.png", full_page=True)


async def test_the_whole_story_in_a_browser(
    start_gatekeeper: StartGatekeeper,
    page: Any,
    smtp: MailCatcher,
    alice: MatrixUser,
) -> None:
    gatekeeper = await start_gatekeeper()
    room_id = await admin_room(gatekeeper, alice)
    base = web_url(gatekeeper)
    uma = new_applicant("uma")

    await page.goto(f"{base}/sign-up")
    await snapshot(page, "sign-up")
    await page.fill("#userName", uma.localpart)
    await page.fill("#email", uma.email)
    await page.fill("#password", uma.password)
    await page.fill("#reason", "My sister told me about it")
    await page.click("button[type=submit]")
    assert await page.text_content("h1") == "Check your email"

    mail = await smtp.wait_for(uma.email, "confirm")
    await page.goto(link(mail, "confirm-email"))
    await page.click("button[type=submit]")
    assert "confirmed" in (await page.text_content("main") or "")
    await page.goto(link(mail, "status"))
    assert await page.get_attribute("#state", "data-state") == "pending"
    await snapshot(page, "status-pending")

    request_id = await request_id_of(gatekeeper, uma)
    await alice.reply_to(room_id, f"!approve {request_id}", BOT)
    for _ in range(100):
        await page.reload()
        if await page.get_attribute("#state", "data-state") == "active":
            break
    assert await page.get_attribute("#state", "data-state") == "active"
    assert await page.text_content("#user-id") == uma.user_id
    assert gatekeeper.config.homeserver.client_url in (
        await page.text_content("#welcome + p") or ""
    )
    await snapshot(page, "status-approved")

    await page.goto(f"{base}/login")
    await page.fill("#email", uma.email)
    await page.fill("#password", uma.password)
    await page.click("button[type=submit]")
    assert page.url.endswith("/settings")
    await page.fill("#password", uma.password)
    await page.click("form[action='/settings/sudo'] button")
    await page.click("form[action='/settings/2fa/start'] button")
    secret = (await page.text_content("#totp-secret") or "").strip()
    assert await page.locator(".qr svg").count() == 1
    totp = pyotp.TOTP(secret)
    await page.fill("#secondFactor", totp.now())
    await page.click("form[action='/settings/2fa/enable'] button")
    assert "now on" in (await page.text_content(".notice") or "")
    await snapshot(page, "settings")

    await page.click("form[action='/logout'] button")
    assert page.url.endswith("/login")
    await page.fill("#email", uma.email)
    await page.fill("#password", uma.password)
    await page.click("button[type=submit]")
    assert await page.text_content("h1") == "Two-factor code"
    await page.fill("#secondFactor", totp.at(time.time() + 30))
    await page.click("button[type=submit]")
    assert page.url.endswith("/settings")

    await page.click("form[action='/logout'] button")
    await page.click("text=Forgot your password?")
    await page.fill("#email", uma.email)
    await page.click("button[type=submit]")
    assert "on its way" in (await page.text_content(".notice") or "")
    reset_mail = await smtp.wait_for(uma.email, "reset")
    await page.goto(link(reset_mail, "reset-password"))
    await page.fill("#newPassword", NEW_PASSWORD)
    await page.click("button[type=submit]")
    assert "password is changed" in (await page.text_content("main") or "")

    await page.goto(f"{base}/login")
    await page.fill("#email", uma.email)
    await page.fill("#password", NEW_PASSWORD)
    await page.click("button[type=submit]")
    assert await page.text_content("h1") == "Two-factor code"  # reset never skips 2FA


async def test_errors_are_shown_next_to_their_fields(
    start_gatekeeper: StartGatekeeper, page: Any
) -> None:
    gatekeeper = await start_gatekeeper()
    await page.goto(f"{web_url(gatekeeper)}/sign-up")
    await page.fill("#userName", "Not Valid!")
    await page.fill("#email", "no-at-sign")
    await page.fill("#password", "short")
    await page.click("button[type=submit]")

    assert await page.text_content("#userName-error") == (
        "A username may only contain the letters a–z, the digits 0–9"
        " and the characters . _ = - / + (no spaces)."
    )
    assert await page.text_content("#email-error") == (
        "This does not look like an email address. Please check it (for example name@example.org)."
    )
    assert await page.text_content("#password-error") == (
        "The password must be at least 8 characters long. A few words make a good one."
    )
    assert await page.get_attribute("#email", "aria-invalid") == "true"
    assert await page.input_value("#userName") == "Not Valid!"  # kept for correcting
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM registration_request") == 0


async def test_german_pages(start_gatekeeper: StartGatekeeper, browser: Any) -> None:
    gatekeeper = await start_gatekeeper()
    context = await browser.new_context(locale="de-DE")
    page = await context.new_page()
    try:
        await page.goto(f"{web_url(gatekeeper)}/sign-up")  # Accept-Language: de-DE
        assert (
            await page.text_content("h1")
            == f"Ein Konto auf {gatekeeper.config.homeserver.domain} beantragen"
        )
        assert await page.get_attribute("html", "lang") == "de"
        await page.click("button[type=submit]")
        assert await page.text_content("#userName-error") == "Bitte wählen Sie einen Benutzernamen."
        await page.click("text=English")  # the switcher
        assert await page.text_content("button[type=submit]") == "Ask for an account"
        await page.goto(f"{web_url(gatekeeper)}/login")  # the choice is remembered
        assert await page.text_content("h1") == "Log in"
    finally:
        await context.close()


async def test_no_inline_script_and_security_headers(
    start_gatekeeper: StartGatekeeper, page: Any
) -> None:
    gatekeeper = await start_gatekeeper()
    for path in ("/sign-up", "/login", "/forgot-password", "/reset-password?token=x"):
        response = await page.goto(web_url(gatekeeper) + path)
        headers = response.headers
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert "script-src" not in policy
        assert "default-src 'none'" in policy
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert await page.locator("script").count() == 0
        for field in await page.locator("input:not([type=hidden]), textarea, select").all():
            field_id = await field.get_attribute("id")
            assert await page.locator(f"label[for='{field_id}']").count() == 1, path


async def test_readable_at_320_pixels(
    start_gatekeeper: StartGatekeeper, browser: Any, tmp_path: Path
) -> None:
    gatekeeper = await start_gatekeeper()
    context = await browser.new_context(viewport={"width": 320, "height": 640})
    page = await context.new_page()
    try:
        for path in ("/sign-up", "/login", "/forgot-password"):
            await page.goto(web_url(gatekeeper) + path)
            await page.screenshot(path=str(tmp_path / f"{path.strip('/')}-320.png"), full_page=True)
            overflowing = await page.evaluate(
                """() => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                    .map(e => e.tagName + '#' + e.id)"""
            )
            assert overflowing == [], (path, overflowing)
            assert await page.evaluate("document.documentElement.scrollWidth") <= 320
    finally:
        await context.close()
