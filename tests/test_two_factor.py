"""Logging in by any of one's names, and two-factor login: the second-factor ticket,
enrolment that survives a typo, recovery codes, a code used a moment ago, the admins'
!reset-2fa, and the settings page on a phone."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.config import WebConfig
from gatekeeper.appservice.domain.passwords import PasswordHasher
from gatekeeper.appservice.domain.registration_request import NewRequest
from gatekeeper.appservice.domain.registrations import Registrations
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.sessions import TICKET_MS, Sessions, token_hash
from harness.matrix_user import MatrixUser
from tests.conftest import SERVER_NAME, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    WebClient,
    active_account,
    logged_in,
    request_id_of,
    started_with_room,
    turn_on_2fa,
    web_url,
)

NO_CONFIRMATION = {"require_email_confirmation": False}
REFUSAL = "Sorry, only Gatekeeper admins can give me commands."
QR_NAME = "QR code of the key for your authenticator app"
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper) -> Gatekeeper:
    return await start_gatekeeper(registration=NO_CONFIRMATION)


def wrong_code(right: str) -> str:
    return f"{(int(right) + 1) % 1_000_000:06d}"


def next_code(totp: pyotp.TOTP) -> str:
    """The app's code of the next time step: inside the window, and never used yet."""
    return totp.at(time.time() + 30)


async def login_answer(gatekeeper: Gatekeeper, name: str, password: str) -> Any:
    async with WebClient(gatekeeper) as client:
        return await client.post("/api/auth/login", {"email": name, "password": password})


async def page_login(page: Any, gatekeeper: Gatekeeper, name: str, password: str) -> None:
    await page.goto(f"{web_url(gatekeeper)}/login")
    await page.fill("#email", name)
    await page.fill("#password", password)
    await page.click("form[action='/login'] button")


async def unlock(page: Any, applicant: Applicant) -> None:
    await page.fill("#password", applicant.password)
    await page.click("form[action='/settings/sudo'] button")


# --- 1. any of one's names ----------------------------------------------------------------


async def test_login_by_email_user_name_or_matrix_id(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, security={"lockout_failures": 3}
    )
    ann = await active_account(gatekeeper, "ann")
    for name in (ann.email, ann.localpart, ann.localpart.upper(), ann.user_id, f" {ann.user_id} "):
        assert await login_answer(gatekeeper, name, ann.password) == (
            200,
            {"status": "logged-in"},
        ), name
    # Unknown names, another server's user and a wrong password: one and the same answer.
    refused = (200, {"status": "invalid-credentials"})
    for name in (f"@{ann.localpart}:elsewhere.example", "nobody-here", f"@nobody:{SERVER_NAME}"):
        assert await login_answer(gatekeeper, name, ann.password) == refused, name
    assert await login_answer(gatekeeper, ann.localpart, "not the password") == refused
    # Three failures under three names lock the one account, whatever name comes next.
    for name in (ann.email, ann.user_id):
        assert await login_answer(gatekeeper, name, "not the password") == refused
    for name in (ann.localpart, ann.email):
        assert await login_answer(gatekeeper, name, ann.password) == refused


async def test_unknown_names_cost_one_hash_like_known_ones(
    gatekeeper: Gatekeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    lu = await active_account(gatekeeper, "lu")
    hashed: list[str] = []
    real = PasswordHasher._verify

    def counted(self: PasswordHasher, stored_hash: str, password: str) -> bool:
        hashed.append(password)
        return real(self, stored_hash, password)

    monkeypatch.setattr(PasswordHasher, "_verify", counted)
    names = [lu.localpart, "nobody-here", f"@{lu.localpart}:elsewhere.example", "no@example.org"]
    for name in names:
        assert await login_answer(gatekeeper, name, f"wrong for {name}") == (
            200,
            {"status": "invalid-credentials"},
        )
    assert hashed == [f"wrong for {name}" for name in names]


async def test_login_page_takes_a_user_name(gatekeeper: Gatekeeper, page: Any) -> None:
    bo = await active_account(gatekeeper, "bo")
    await page.goto(f"{web_url(gatekeeper)}/login")
    # A text field: the browser no longer asks for an "@" before sending the form.
    assert await page.get_attribute("#email", "type") == "text"
    assert await page.get_attribute("#email", "autocomplete") == "username"
    assert await page.text_content("label[for='email']") == "Email address or username"
    assert f"@name:{SERVER_NAME}" in (await page.text_content("#email-hint") or "")
    await page_login(page, gatekeeper, bo.localpart, bo.password)
    assert page.url.endswith("/settings")


# --- 2. the second factor's form holds a ticket, not the password -------------------------


async def test_second_factor_page_holds_a_ticket_not_the_password(
    gatekeeper: Gatekeeper, page: Any
) -> None:
    cy = await active_account(gatekeeper, "cy")
    async with await logged_in(gatekeeper, cy) as client:
        on = await turn_on_2fa(client, cy)

    await page_login(page, gatekeeper, cy.localpart, cy.password)
    assert await page.text_content("h1") == "Two-factor code"
    assert cy.password not in await page.content()
    assert await page.locator("input[name=password]").count() == 0
    assert await page.get_attribute("#secondFactor", "inputmode") == "numeric"
    assert await page.get_attribute("#secondFactor", "autocomplete") == "one-time-code"
    ticket = await page.get_attribute("form[action='/login/second-factor'] [name=ticket]", "value")
    stored = await gatekeeper.db.fetch("SELECT token_hash FROM second_factor_ticket")
    assert [row["token_hash"] for row in stored] == [token_hash(ticket)]  # a hash only

    await page.fill("#secondFactor", wrong_code(on.confirming_code))
    await page.click("form[action='/login/second-factor'] button")
    assert await page.text_content(".notice") == "That code is not right."
    # The try used the ticket up; the form carries a new one, which ends with the first.
    again = await page.get_attribute("form[action='/login/second-factor'] [name=ticket]", "value")
    assert again != ticket
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM second_factor_ticket") == 1

    # Too late: the password is asked for again.
    await gatekeeper.db.execute("UPDATE second_factor_ticket SET expires_at = 1")
    await page.fill("#secondFactor", next_code(on.totp))
    await page.click("form[action='/login/second-factor'] button")
    assert await page.text_content("h1") == "Log in"
    assert (
        await page.text_content(".notice")
        == "That took too long. Please enter your password again."
    )

    await page_login(page, gatekeeper, cy.email, cy.password)
    await page.fill("#secondFactor", next_code(on.totp))
    await page.click("form[action='/login/second-factor'] button")
    assert page.url.endswith("/settings")


async def test_tickets_are_single_use_and_short_lived(db: Database) -> None:
    request = await Registrations(RegistrationStore(db)).create(
        NewRequest(
            localpart="dee",
            email="dee@example.org",
            language="en",
            reason="testing",
            password_hash="x",
            password_encrypted="x",
        ),
        confirmed=True,
    )
    sessions = Sessions(db, WebConfig())
    ticket = await sessions.issue_ticket(request.id)
    redeemed = await sessions.redeem_ticket(ticket)
    assert redeemed is not None
    assert redeemed[0] == request.id
    assert 0 < redeemed[1] - int(time.time() * 1000) <= TICKET_MS
    assert await sessions.redeem_ticket(ticket) is None
    # A follow-up ticket keeps the first one's end; an ended one is worth nothing.
    follow_up = await sessions.issue_ticket(request.id, redeemed[1])
    assert (await sessions.redeem_ticket(follow_up)) == redeemed
    old = await sessions.issue_ticket(request.id, int(time.time() * 1000) - 1)
    assert await sessions.redeem_ticket(old) is None
    assert await sessions.redeem_ticket("") is None
    # A password, email or 2FA change ends the tickets waiting for a second factor.
    waiting = await sessions.issue_ticket(request.id)
    await sessions.end_all_others(request.id, None)
    assert await sessions.redeem_ticket(waiting) is None


# --- 3. and 7. enrolment keeps its key, and fits a phone -----------------------------------


async def test_enrolment_survives_a_wrong_code_and_fits_a_phone(
    gatekeeper: Gatekeeper, browser: Any
) -> None:
    eve = await active_account(gatekeeper, "eve")
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    try:
        await page_login(page, gatekeeper, eve.email, eve.password)
        await unlock(page, eve)
        await page.click("form[action='/settings/2fa/start'] button")
        qr = page.get_by_role("img", name=QR_NAME)
        assert await qr.count() == 1
        first = await page.text_content("#totp-secret")
        await page.click("text=Start over with a new key")
        secret = await page.text_content("#totp-secret") or ""
        assert secret != first

        await page.fill("#secondFactor", wrong_code(pyotp.TOTP(secret).now()))
        await page.click("form[action='/settings/2fa/enable'] button")
        assert await page.text_content(".notice") == "That code is not right."
        # The same key, still on show near the top of a phone's screen.
        assert await page.text_content("#totp-secret") == secret
        box = await qr.bounding_box()
        assert box is not None
        assert box["y"] + box["height"] <= PHONE["height"], box
        assert await page.get_attribute("#secondFactor", "inputmode") == "numeric"
        assert await page.get_attribute("#secondFactor", "autocomplete") == "one-time-code"
        assert "Element and other Matrix apps still log in with your password alone" in (
            await page.text_content("#tfa-scope") or ""
        )

        await page.fill("#secondFactor", pyotp.TOTP(secret).now())
        await page.click("form[action='/settings/2fa/enable'] button")
        assert await page.text_content(".notice") == "Two-factor login is now on."
        codes = await page.locator("#recovery-codes li").all_text_contents()
        assert len(codes) == 10
        top = await page.locator("#recovery-codes").bounding_box()
        assert top is not None
        assert top["y"] < PHONE["height"]
        assert await page.text_content("#recovery-left") == "Recovery codes left: 10."

        await page.goto(f"{web_url(gatekeeper)}/settings?lang=de")
        assert await page.text_content("#recovery-left") == (
            "Verbleibende Wiederherstellungscodes: 10."
        )
        assert "Element und andere Matrix-Apps melden sich weiterhin allein mit Ihrem " in (
            await page.text_content("#tfa-scope") or ""
        )
    finally:
        await context.close()


async def test_generate_answers_the_waiting_secret_until_restarted(gatekeeper: Gatekeeper) -> None:
    fay = await active_account(gatekeeper, "fay")
    async with await logged_in(gatekeeper, fay) as client:
        generate = "/api/user/settings/generate-temporary-2fa"
        first = (await client.post(generate))[1]["secret"]
        assert (await client.post(generate, {}))[1]["secret"] == first
        await client.post("/api/user/settings/sudo", {"password": fay.password})
        status, body = await client.post(
            "/api/user/settings/sensitive/2fa", {"enable": True, "secondFactor": "000000"}
        )
        assert (status, body["errcode"]) == (400, "GK_WRONG_CODE")
        assert (await client.post(generate))[1]["secret"] == first
        restarted = (await client.post(generate, {"restart": True}))[1]["secret"]
        assert restarted != first
        status, body = await client.post(
            "/api/user/settings/sensitive/2fa",
            {"enable": True, "secondFactor": pyotp.TOTP(restarted).now()},
        )
        assert (status, len(body["recoveryCodes"])) == (200, 10)


# --- 4. recovery codes and the admins' reset ------------------------------------------------


async def test_a_recovery_code_logs_in_once_and_new_ones_replace_it(
    gatekeeper: Gatekeeper, page: Any
) -> None:
    gus = await active_account(gatekeeper, "gus")
    async with await logged_in(gatekeeper, gus) as client:
        codes = (await turn_on_2fa(client, gus)).recovery_codes

    await page_login(page, gatekeeper, gus.email, gus.password)
    await page.click("#recovery summary")
    await page.fill("#recoveryCode", codes[0].upper())
    await page.click("#recovery button")
    assert page.url.endswith("/settings")
    await unlock(page, gus)
    assert await page.text_content("#recovery-left") == "Recovery codes left: 9."
    await page.click("form[action='/settings/2fa/recovery-codes'] button")
    assert await page.text_content(".notice") == (
        "Here are your new recovery codes. The old ones no longer work."
    )
    new = await page.locator("#recovery-codes li").all_text_contents()
    assert len(new) == 10
    assert not set(new) & set(codes)

    await page.click("form[action='/logout'] button")
    await page_login(page, gatekeeper, gus.email, gus.password)
    for code in (codes[0], codes[1], new[0]):  # used, replaced, new
        await page.click("#recovery summary")
        await page.fill("#recoveryCode", code)
        await page.click("#recovery button")
        if code != new[0]:
            assert await page.text_content(".notice") == "That code is not right."
    assert page.url.endswith("/settings")


async def test_recovery_codes_and_a_code_just_used_through_the_api(
    gatekeeper: Gatekeeper,
) -> None:
    hal = await active_account(gatekeeper, "hal")
    async with await logged_in(gatekeeper, hal) as client:
        on = await turn_on_2fa(client, hal)
    step_two = "/api/auth/login-with-second-factor"
    login = {"email": hal.localpart, "password": hal.password}
    async with WebClient(gatekeeper) as client:
        # The code that turned 2FA on, again within its 30 s: said so, not "wrong".
        assert await client.post(step_two, {**login, "secondFactor": on.confirming_code}) == (
            200,
            {"loggedIn": False, "status": "code-just-used"},
        )
        assert await client.post(step_two, {**login, "secondFactor": on.recovery_codes[0]}) == (
            200,
            {"loggedIn": True, "status": "logged-in"},
        )
        assert await client.post(step_two, {**login, "secondFactor": on.recovery_codes[0]}) == (
            200,
            {"loggedIn": False, "status": "invalid-credentials"},
        )
        renew = "/api/user/settings/sensitive/recovery-codes"
        assert (await client.post(renew))[1]["errcode"] == "GK_SUDO_REQUIRED"
        await client.post("/api/user/settings/sudo", {"password": hal.password})
        status, body = await client.post(renew)
        assert (status, len(body["recoveryCodes"])) == (200, 10)
        assert await client.post("/api/user/settings/sensitive/2fa", {"enable": False}) == (
            200,
            {"enabled": False},
        )
        status, body = await client.post(renew)
        assert (status, body["errcode"]) == (409, "GK_2FA_OFF")


async def test_just_used_code_is_explained_on_the_page_in_both_languages(
    gatekeeper: Gatekeeper, page: Any
) -> None:
    ida = await active_account(gatekeeper, "ida")
    async with await logged_in(gatekeeper, ida) as client:
        on = await turn_on_2fa(client, ida)
    await page_login(page, gatekeeper, ida.email, ida.password)
    await page.fill("#secondFactor", on.confirming_code)
    await page.click("form[action='/login/second-factor'] button")
    assert (await page.text_content(".notice") or "").startswith(
        "That code was just used, and each code works only once. Wait until your app shows "
        "the next code"
    )
    await page.context.add_cookies([{"name": "lang", "value": "de", "url": web_url(gatekeeper)}])
    await page.fill("#secondFactor", on.confirming_code)
    await page.click("form[action='/login/second-factor'] button")
    assert (await page.text_content(".notice") or "").startswith(
        "Dieser Code wurde gerade schon verwendet, und jeder Code gilt nur einmal."
    )


async def test_admins_reset_2fa(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    mallory: MatrixUser,
    smtp: MailCatcher,
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    await alice.api.invite_user(room_id, mallory.user_id)
    await mallory.wait_for_invite(room_id)
    await mallory.api.join_room_by_id(room_id)
    jo, kai = await active_account(gatekeeper, "jo"), await active_account(gatekeeper, "kai")
    jo_session = await logged_in(gatekeeper, jo)
    await turn_on_2fa(jo_session, jo)
    async with await logged_in(gatekeeper, kai) as client:
        await turn_on_2fa(client, kai)
        await client.post("/api/user/settings/language", {"language": "de"})
    kai_id = await request_id_of(gatekeeper, kai)

    assert await mallory.reply_to(room_id, f"!reset-2fa {jo.localpart}", BOT) == REFUSAL
    assert await login_answer(gatekeeper, jo.email, jo.password) == (
        200,
        {"status": "second-factor-required"},
    )
    assert await alice.reply_to(room_id, "!reset-2fa", BOT) == (
        "Usage: !reset-2fa <user or request id> [reason]"
    )
    assert await alice.reply_to(room_id, "!reset-2fa nobody-at-all", BOT) == (
        f"No request or account of nobody-at-all can log in to Gatekeeper. Give its request "
        f"ID, @name:{SERVER_NAME} or just the name."
    )
    done = (
        "Turned off the two-factor login of {} (request {}), with its recovery codes. Their "
        "Gatekeeper sessions ended and they got an email; they log in with their password "
        "alone now, and may set it up again in their settings."
    )
    reply = await alice.reply_to(room_id, f"!reset-2fa {jo.localpart} lost phone, checked ID", BOT)
    jo_id = await request_id_of(gatekeeper, jo)
    assert reply == done.format(jo.user_id, jo_id)
    assert await alice.reply_to(room_id, f"!reset-2fa {kai_id}", BOT) == done.format(
        kai.user_id, kai_id
    )
    assert await alice.reply_to(room_id, f"!reset-2fa {jo.user_id}", BOT) == (
        f"{jo.user_id} (request {jo_id}) has no two-factor login; nothing changed."
    )

    rows = await gatekeeper.db.fetch(
        "SELECT request_id, actor, reason FROM two_factor_reset ORDER BY at"
    )
    assert [(r["request_id"], r["actor"], r["reason"]) for r in rows] == [
        (jo_id, alice.user_id, "lost phone, checked ID"),
        (kai_id, alice.user_id, None),
    ]
    # Their sessions ended; the password alone logs in now.
    assert await jo_session.get("/api/user-info") == (200, {})
    await jo_session.session.close()
    assert await login_answer(gatekeeper, jo.email, jo.password) == (200, {"status": "logged-in"})

    mail = await smtp.wait_for(jo.email, "Two-factor login")
    assert str(mail["Subject"]) == f"Two-factor login of {jo.user_id} is off"
    assert f"{web_url(gatekeeper)}/login" in mail.get_content()
    assert "If you did not ask for this, contact the homeserver's admins" in mail.get_content()
    german = await smtp.wait_for(kai.email, "Zwei-Faktor")
    assert str(german["Subject"]) == f"Die Zwei-Faktor-Anmeldung von {kai.user_id} ist aus"
    assert "Wiederherstellungscodes gelten nicht mehr" in german.get_content()
