"""What applicants and account holders do about their own data, in a browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    active_account,
    api,
    link_token,
    logged_in,
    new_applicant,
    request_id_of,
    sign_up,
    web_url,
)
from tests.test_pages import link
from tests.test_retention import database_text


async def test_withdrawing_on_the_status_page_erases_the_request(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    ann = new_applicant("ann")
    reason = f"the reason of {ann.localpart}"
    assert (await sign_up(gatekeeper, ann, reason=reason))[0] == 201
    request_id = await request_id_of(gatekeeper, ann)
    mail = await smtp.wait_for(ann.email, "confirm")

    await page.goto(link(mail, "status"))
    assert await page.text_content("#user-id") == ann.user_id
    await page.click("form[action='/status/withdraw'] button")
    assert await page.get_attribute("#state", "data-state") == "withdrawn"
    assert await page.text_content(".notice") == (
        "Your email address, the name you asked for and your reason are erased. "
        "You may sign up again."
    )
    assert await page.locator("#user-id").count() == 0
    await page.click("a[hreflang=de]")
    assert await page.text_content("#state") == "Von Ihnen zurückgezogen."
    assert await page.text_content(".notice") == (
        "Ihre E-Mail-Adresse, der gewünschte Name und Ihre Begründung sind gelöscht. "
        "Sie können sich erneut registrieren."
    )

    # Gone from every table at once, not after the retention; the tombstone stays.
    dump = await database_text(gatekeeper.db)
    for data in (ann.email, ann.localpart, reason):
        assert data not in dump
    _, body = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
    assert body["state"] == "withdrawn"
    status_token = link_token(mail, "status")
    assert await api(gatekeeper, "GET", f"/api/registration/status?token={status_token}") == (
        200,
        {"status": "withdrawn", "userId": "", "email": ""},
    )


async def test_an_account_holder_downloads_their_data_after_entering_the_password(
    start_gatekeeper: StartGatekeeper, page: Any
) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_email_confirmation": False})
    cy = await active_account(gatekeeper, "cy")
    request_id = await request_id_of(gatekeeper, cy)

    await page.goto(f"{web_url(gatekeeper)}/login")
    await page.fill("#email", cy.email)
    await page.fill("#password", cy.password)
    await page.click("button[type=submit]")
    assert await page.locator("form[action='/settings/personal-data']").count() == 0
    assert "or to download your data" in (await page.text_content("main") or "")
    await page.fill("#password", cy.password)
    await page.click("form[action='/settings/sudo'] button")
    async with page.expect_download() as downloading:
        await page.click("text=Download my data")
    download = await downloading.value
    assert download.suggested_filename == "gatekeeper-data.json"
    data = json.loads(Path(await download.path()).read_text())
    assert data["request"]["id"] == request_id
    assert data["request"]["email"] == cy.email
    assert data["request"]["localpart"] == cy.localpart
    assert data["request"]["state"] == "active"
    assert [row["to_state"] for row in data["history"]][-1] == "active"
    assert data["two_factor"]["on"] is False
    # No secrets: a copy of them would only help whoever gets hold of the file.
    assert "password_hash" not in data["request"]
    assert "password_encrypted" not in data["request"]

    # The API: the same, also only after the password.
    async with await logged_in(gatekeeper, cy) as client:
        path = "/api/user/settings/sensitive/personal-data"
        status, body = await client.get(path)
        assert (status, body["errcode"]) == (403, "GK_SUDO_REQUIRED")
        assert await client.post("/api/user/settings/sudo", {"password": cy.password}) == (
            200,
            {"success": True},
        )
        status, body = await client.get(path)
        assert status == 200
        assert body == {**data, "web_sessions": body["web_sessions"]}


async def test_an_account_holder_deletes_their_account_by_a_mail_link(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_email_confirmation": False})
    dee = await active_account(gatekeeper, "dee")
    request_id = await request_id_of(gatekeeper, dee)

    await page.goto(f"{web_url(gatekeeper)}/login")
    await page.fill("#email", dee.email)
    await page.fill("#password", dee.password)
    await page.click("button[type=submit]")
    assert await page.locator("form[action='/settings/delete-account']").count() == 0
    await page.fill("#password", dee.password)
    await page.click("form[action='/settings/sudo'] button")
    await page.click("form[action='/settings/delete-account'] button")
    assert await page.text_content(".notice") == (
        f"We sent a link to {dee.email}. Open it within an hour to delete your account."
    )
    mail = await smtp.wait_for(dee.email, "delete the Matrix account")
    assert "within 1 hour" in mail.get_content()
    _, body = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
    assert body["state"] == "active"  # asking alone deletes nothing

    # German, as the settings were shown in English: the page follows ?lang.
    await page.goto(link(mail, "delete-account") + "&lang=de")
    await page.click("main button[type=submit]")
    assert "Ihr Konto ist gelöscht" in (await page.text_content("main") or "")
    _, body = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
    assert body["state"] == "deactivated"
    status, whois = await api(gatekeeper, "GET", f"/api/admin/users/{dee.user_id}", admin=True)
    assert status == 200
    assert whois["lastAction"]["actor"] == "account holder"
    assert whois["lastAction"]["erase"] is True
    dump = await database_text(gatekeeper.db)
    assert dee.email not in dump

    # The link works once.
    await page.goto(link(mail, "delete-account") + "&lang=en")
    await page.click("main button[type=submit]")
    assert await page.text_content("main p") == (
        "This link is not valid (any more). Log in and ask again."
    )
