"""What applicants and account holders do about their own data, in a browser."""

from __future__ import annotations

from typing import Any

from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import api, link_token, new_applicant, request_id_of, sign_up
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
