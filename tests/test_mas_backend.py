"""The whole story with MAS as the account backend: sign-up, approval in the room, the
account in MAS, changes on Gatekeeper's site reaching MAS, and a crash between "made in
MAS" and "recorded here".

MAS cannot be installed here (a Rust binary and a container image), so MAS is the stand-in
of harness/mas_standin.py, which refuses every request that does not match MAS's published
admin-API document. The room is a real Synapse's, the mail a real SMTP server's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gatekeeper.appservice.config import DatabaseConfig
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.database import create_database
from harness.mas_standin import MasStandin
from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    WebClient,
    api,
    is_edit_of,
    is_notice_for,
    link_token,
    logged_in,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
)
from tests.test_moderation import CONFIRM_RE

pytestmark = pytest.mark.synapse

CLIENT_ID = "01JGATEKEEPER0000000000TEST"
CLIENT_SECRET = secrets.token_urlsafe(24)
NO_CONFIRMATION = {"require_email_confirmation": False}
NEW_PASSWORD = "a new passphrase set through MAS 5"


@pytest.fixture
async def mas() -> AsyncIterator[MasStandin]:
    async with MasStandin.running(CLIENT_ID, CLIENT_SECRET) as standin:
        yield standin
        # Every request Gatekeeper made was one MAS would take.
        assert standin.refused == []
        assert standin.problems == []


def with_mas(mas: MasStandin) -> dict[str, Any]:
    return {
        "registration_shared_secret": None,
        "mas": {"url": mas.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    }


async def approved_in_room(
    gatekeeper: Gatekeeper, alice: MatrixUser, room_id: Any, applicant: Applicant
) -> str:
    notice = await alice.wait_for(is_notice_for(room_id, applicant))
    await alice.api.react(room_id, notice["event_id"], "✅")
    await alice.wait_for(is_edit_of(notice["event_id"], f"account {applicant.user_id} created"))
    return await request_id_of(gatekeeper, applicant)


async def test_sign_up_approval_and_changes_reach_mas(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher, mas: MasStandin
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, homeserver=with_mas(mas), registration=NO_CONFIRMATION
    )
    taken = mas.add_user(f"taken-{secrets.token_hex(3)}")
    status, body = await sign_up(gatekeeper, Applicant(taken.username, "t@example.org"))
    assert (status, body["fields"]) == (422, {"userName": "is already taken"})

    ann = new_applicant()
    assert (await sign_up(gatekeeper, ann, reason="from the choir"))[0] == 201
    await approved_in_room(gatekeeper, alice, room_id, ann)
    made = mas.users[ann.localpart]
    assert made.password == ann.password
    assert mas.emails_of(ann.localpart) == [ann.email]
    welcome = await smtp.wait_for(ann.email, "approved")
    assert "the password you chose" in welcome.get_content()

    # A reset on Gatekeeper's site sets the MAS password.
    async with WebClient(gatekeeper) as client:
        await client.post("/api/auth/request-password-reset", {"email": ann.email})
        token = link_token(await smtp.wait_for(ann.email, "reset"), "reset-password")
        reset = {"email": ann.email, "token": token, "newPassword": NEW_PASSWORD}
        assert await client.post("/api/auth/reset-password", reset) == (200, {"status": "success"})
    assert mas.users[ann.localpart].password == NEW_PASSWORD

    # An email change replaces the address in MAS.
    new_email = f"ann-new-{secrets.token_hex(3)}@example.org"
    async with await logged_in(gatekeeper, Applicant(ann.localpart, ann.email, NEW_PASSWORD)) as c:
        await c.post("/api/user/settings/sudo", {"password": NEW_PASSWORD})
        assert await c.post(
            "/api/user/settings/sensitive/change-email", {"newEmail": new_email}
        ) == (
            200,
            {},
        )
        token = link_token(await smtp.wait_for(new_email, "confirm"), "confirm-email-change")
        assert await c.post("/api/user/settings/confirm-email-change", {"token": token}) == (
            200,
            {"status": "new-email-confirmed", "email": new_email},
        )
    assert mas.emails_of(ann.localpart) == [new_email]

    # When MAS refuses, the site says the Matrix account kept the old password.
    mas.fail_next("setUserPassword", status=503)
    async with await logged_in(gatekeeper, Applicant(ann.localpart, new_email, NEW_PASSWORD)) as c:
        await c.post("/api/user/settings/sudo", {"password": NEW_PASSWORD})
        status, answer = await c.post(
            "/api/user/settings/sensitive/change-password", {"newPassword": "yet another one 77"}
        )
    assert (status, answer["status"]) == (200, "matrix-unchanged")
    assert mas.users[ann.localpart].password == NEW_PASSWORD
    assert len(mas.users) == 2  # the taken name's owner and Ann: nothing made twice

    # Moderation from the room reaches MAS: suspension is MAS's lock.
    answer = await alice.reply_to(room_id, f"!suspend {ann.localpart} spam", BOT)
    assert answer.startswith(f"Suspended {ann.user_id}")
    assert mas.users[ann.localpart].locked_at is not None
    assert "Suspended: yes" in await alice.reply_to(room_id, f"!whois {ann.user_id}", BOT)
    await alice.reply_to(room_id, f"!unsuspend {ann.localpart}", BOT)
    assert mas.users[ann.localpart].locked_at is None
    ask = await alice.reply_to(room_id, f"!deactivate {ann.user_id} --erase", BOT)
    code = CONFIRM_RE.search(ask)
    assert code, ask
    assert mas.users[ann.localpart].deactivated_at is None
    answer = await alice.reply_to(room_id, f"!confirm {code[1]}", BOT)
    assert answer.startswith(f"Deactivated and erased {ann.user_id}")
    deactivated = mas.users[ann.localpart]
    assert deactivated.deactivated_at is not None
    assert deactivated.erase_requested is True


async def test_after_approval_on_mas_sets_the_password_with_the_link(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher, mas: MasStandin
) -> None:
    gatekeeper = await start_gatekeeper(
        homeserver=with_mas(mas),
        registration={**NO_CONFIRMATION, "password": "after_approval"},
    )
    bea = new_applicant("bea")
    body = {"userName": bea.localpart, "email": bea.email, "language": "en"}
    assert (await api(gatekeeper, "POST", "/api/auth/sign-up", body))[0] == 201
    request_id = await request_id_of(gatekeeper, bea)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")
    made = mas.users[bea.localpart]
    assert (made.password, made.passwords_set) == (None, 0)
    assert mas.emails_of(bea.localpart) == [bea.email]
    row = await gatekeeper.db.fetchrow(
        "SELECT password_hash, password_encrypted FROM registration_request WHERE id=$1",
        request_id,
    )
    assert row is not None
    assert (row["password_hash"], row["password_encrypted"]) == ("", None)

    token = link_token(await smtp.wait_for(bea.email, "choose its password"), "reset-password")
    reset = {"email": bea.email, "token": token, "newPassword": NEW_PASSWORD}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", reset) == (
        200,
        {"status": "success"},
    )
    assert mas.users[bea.localpart].password == NEW_PASSWORD
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", reset) == (
        200,
        {"status": "invalid-token"},
    )


async def test_an_account_made_before_a_crash_is_adopted_not_made_twice(
    start_gatekeeper: StartGatekeeper, mas: MasStandin, db_url: str
) -> None:
    # MAS makes the user, then its answer is lost; the first process would retry only in
    # a minute, and stops before that.
    mas.drop_answers("createUser")
    slow_retry = {**NO_CONFIRMATION, "retry_initial_seconds": 60.0, "retry_max_seconds": 60.0}
    gatekeeper = await start_gatekeeper(homeserver=with_mas(mas), registration=slow_retry)
    cy = new_applicant("cy")
    assert (await sign_up(gatekeeper, cy))[0] == 201
    request_id = await request_id_of(gatekeeper, cy)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)

    async def made_in_mas() -> bool:
        return cy.localpart in mas.users

    await wait_until(made_in_mas, timeout=30)
    await wait_for_state(gatekeeper, request_id, "approved")  # its retry is scheduled
    await gatekeeper.stop()
    # What a crash right after MAS made the user leaves: the request still marked as
    # being provisioned, nothing recorded of the account.
    db = create_database(DatabaseConfig(url=db_url))
    await db.start()
    await db.execute(
        "UPDATE registration_request SET matrix_status='processing' WHERE id=$1", request_id
    )
    await db.stop()

    again = await start_gatekeeper(homeserver=with_mas(mas), registration=NO_CONFIRMATION)
    await wait_for_state(again, request_id, "active")
    assert [call.operation for call in mas.calls].count("createUser") == 1
    assert list(mas.users) == [cy.localpart]
    assert mas.users[cy.localpart].password == cy.password
    assert mas.emails_of(cy.localpart) == [cy.email]
    row = await again.db.fetchrow(
        "SELECT matrix_user_id, password_encrypted FROM registration_request WHERE id=$1",
        request_id,
    )
    assert row is not None
    assert (row["matrix_user_id"], row["password_encrypted"]) == (cy.user_id, None)


async def test_the_settings_page_can_send_people_to_mas_for_password_and_email(
    start_gatekeeper: StartGatekeeper, mas: MasStandin, page: Any
) -> None:
    account_url = "https://auth.example.org/account/"
    gatekeeper = await start_gatekeeper(
        homeserver={**with_mas(mas), "mas": {**with_mas(mas)["mas"], "account_url": account_url}},
        registration=NO_CONFIRMATION,
    )
    dee = new_applicant("dee")
    assert (await sign_up(gatekeeper, dee))[0] == 201
    request_id = await request_id_of(gatekeeper, dee)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")

    base = f"http://127.0.0.1:{gatekeeper.config.web.port}"
    await page.goto(f"{base}/login")
    await page.fill("#email", dee.email)
    await page.fill("#password", dee.password)
    await page.click("button[type=submit]")
    assert page.url.endswith("/settings")
    await page.fill("#password", dee.password)
    await page.click("form[action='/settings/sudo'] button")
    assert await page.get_attribute("#account-url", "href") == account_url
    assert await page.locator("form[action='/settings/password']").count() == 0
    assert await page.locator("form[action='/settings/email']").count() == 0
    # What stays Gatekeeper's own: the second factor.
    assert await page.locator("form[action='/settings/2fa/start']").count() == 1


async def test_on_mas_a_newcomer_room_the_bot_cannot_invite_to_is_told_to_the_admins(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, mas: MasStandin
) -> None:
    # MAS joins nobody to rooms, and the bot was never asked into this invite-only one.
    lobby = await alice.api.create_room(name="Closed lobby")
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        homeserver=with_mas(mas),
        registration={**NO_CONFIRMATION, "newcomer_rooms": [lobby]},
    )
    ann = new_applicant()
    assert (await sign_up(gatekeeper, ann))[0] == 201
    await approved_in_room(gatekeeper, alice, room_id, ann)

    note = await alice.wait_for(
        lambda e: (
            e["room_id"] == room_id
            and e["sender"] == BOT
            and f"{ann.user_id} could not be brought into {lobby}" in e["content"].get("body", "")
        )
    )
    assert "is not in the room and cannot join" in note["content"]["body"]
