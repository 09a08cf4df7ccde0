"""Self-service, end to end: login, TOTP, sessions, sudo, reset, email and language.

Each test names the security rule it proves where it proves one.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pyotp
import pytest

from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.sessions import Sessions
from harness.matrix_user import wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    Applicant,
    WebClient,
    active_account,
    api,
    can_log_in,
    link_token,
    logged_in,
    turn_on_2fa,
)

NEW_PASSWORD = "another fine passphrase 77"


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper, synapse: Homeserver) -> Gatekeeper:
    """Gatekeeper with an admin token, so Matrix passwords follow web ones."""
    admin = await synapse.server.register_user(
        f"server-admin-{secrets.token_hex(3)}", "admin password 123", admin=True
    )
    return await start_gatekeeper(
        homeserver={"admin_token": admin["access_token"]},
        registration={"require_email_confirmation": False},
    )


async def enable_totp(client: WebClient, applicant: Applicant) -> pyotp.TOTP:
    return (await turn_on_2fa(client, applicant)).totp


def later_code(totp: pyotp.TOTP, steps: int = 1) -> str:
    """A code of a later time step (still inside the ±1 window for steps=1)."""
    return totp.at(time.time() + 30 * steps)


async def test_a_persons_whole_story(
    gatekeeper: Gatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    ann = await active_account(gatekeeper, "ann")
    other_device = await logged_in(gatekeeper, ann)
    async with await logged_in(gatekeeper, ann) as client:
        status, info = await client.get("/api/user-info")
        assert status == 200
        assert info["status"] == "active"
        assert info["userId"] == ann.user_id
        assert info["emailVerified"] is True
        totp = await enable_totp(client, ann)
        assert (await client.post("/api/auth/logout", {"forgetDevice": False}))[0] == 200
        assert await client.get("/api/user-info") == (200, {})

        login = {"email": ann.email, "password": ann.password}
        assert await client.post("/api/auth/login", login) == (
            200,
            {"status": "second-factor-required"},
        )
        status, body = await client.post(
            "/api/auth/login-with-second-factor",
            {**login, "secondFactor": later_code(totp), "rememberDevice": True},
        )
        assert (status, body) == (200, {"loggedIn": True, "status": "logged-in"})
        await client.post("/api/auth/logout", {"forgetDevice": False})
        # The remembered device skips the code, never the password.
        assert await client.post("/api/auth/login", login) == (200, {"status": "logged-in"})
        await client.post("/api/auth/logout", {})
        assert await client.post("/api/auth/login", {**login, "password": "wrong password!"}) == (
            200,
            {"status": "invalid-credentials"},
        )
        # Forgetting the device on logout brings the code back.
        assert await client.post("/api/auth/login", login) == (200, {"status": "logged-in"})
        await client.post("/api/auth/logout", {"forgetDevice": True})
        assert await client.post("/api/auth/login", login) == (
            200,
            {"status": "second-factor-required"},
        )

    # Enabling 2FA ended the other session (SECURITY: 2FA change ends other sessions).
    assert await other_device.get("/api/user-info") == (200, {})
    await other_device.session.close()

    async with WebClient(gatekeeper) as anonymous:
        assert await anonymous.post("/api/auth/request-password-reset", {"email": ann.email}) == (
            200,
            {},
        )
        mail = await smtp.wait_for(ann.email, "reset")
        token = link_token(mail, "reset-password")
        assert mail.get_content().count(gatekeeper.config.web.public_base_url) == 1
        status, body = await anonymous.post(
            "/api/auth/reset-password",
            {"email": ann.email, "token": token, "newPassword": NEW_PASSWORD},
        )
        assert (status, body) == (200, {"status": "success"})
        # Reset never logs anyone in.
        assert anonymous.cookie("LOGIN_TOKEN") is None
        assert await anonymous.get("/api/user-info") == (200, {})

    assert await can_log_in(synapse.url, ann, NEW_PASSWORD)
    assert not await can_log_in(synapse.url, ann)
    # Reset keeps the second factor: the new password alone is not enough.
    async with WebClient(gatekeeper) as client:
        assert await client.post(
            "/api/auth/login", {"email": ann.email, "password": NEW_PASSWORD}
        ) == (200, {"status": "second-factor-required"})


async def test_change_password_ends_other_sessions_and_sets_matrix_password(
    gatekeeper: Gatekeeper, synapse: Homeserver
) -> None:
    bo = await active_account(gatekeeper, "bo")
    other = await logged_in(gatekeeper, bo)
    async with await logged_in(gatekeeper, bo) as client:
        path = "/api/user/settings/sensitive/change-password"
        status, body = await client.post(path, {"newPassword": NEW_PASSWORD})
        assert (status, body["errcode"]) == (403, "GK_SUDO_REQUIRED")
        wrong = await client.post("/api/user/settings/sudo", {"password": "not my password"})
        assert wrong == (200, {"success": False})
        await client.post("/api/user/settings/sudo", {"password": bo.password})
        status, body = await client.post(path, {"newPassword": "password1"})
        assert (status, body["field"]) == (422, "newPassword")  # common passwords refused
        assert await client.post(path, {"newPassword": NEW_PASSWORD}) == (
            200,
            {"status": "success"},
        )
        assert (await client.get("/api/user-info"))[1]["status"] == "active"  # kept
    assert await other.get("/api/user-info") == (200, {})
    await other.session.close()
    assert await can_log_in(synapse.url, bo, NEW_PASSWORD)
    assert not await can_log_in(synapse.url, bo)


async def test_change_email_with_sudo(gatekeeper: Gatekeeper, smtp: MailCatcher) -> None:
    cy = await active_account(gatekeeper, "cy")
    new_email = f"cy-new-{secrets.token_hex(3)}@example.org"
    async with await logged_in(gatekeeper, cy) as client:
        path = "/api/user/settings/sensitive/change-email"
        assert (await client.post(path, {"newEmail": new_email}))[0] == 403
        await client.post("/api/user/settings/sudo", {"password": cy.password})
        status, body = await client.post(path, {"newEmail": "not an address"})
        assert (status, body["field"]) == (422, "newEmail")
        assert await client.post(path, {"newEmail": new_email}) == (200, {})

        mail = await smtp.wait_for(new_email, "confirm")
        token = link_token(mail, "confirm-email-change")
        confirm = "/api/user/settings/confirm-email-change"
        assert await client.post(confirm, {"token": "wrong"}) == (
            200,
            {"status": "invalid-token", "email": cy.email},
        )
        assert await client.post(confirm, {"token": token}) == (
            200,
            {"status": "new-email-confirmed", "email": new_email},
        )
        assert await client.post(confirm, {"token": token}) == (
            200,
            {"status": "no-change-in-progress", "email": new_email},
        )
        assert (await client.get("/api/user-info"))[1]["email"] == new_email
    notice = await smtp.wait_for(cy.email, new_email)
    assert "changed" in notice.get_content()


async def test_language_applies_to_the_next_mail(gatekeeper: Gatekeeper, smtp: MailCatcher) -> None:
    di = await active_account(gatekeeper, "di")
    async with await logged_in(gatekeeper, di) as client:
        status, body = await client.post("/api/user/settings/language", {"language": "xx"})
        assert (status, body["field"]) == (422, "language")
        assert await client.post("/api/user/settings/language", {"language": "de"}) == (200, {})
        assert (await client.get("/api/user-info"))[1]["language"] == "de"
        await client.post("/api/auth/request-password-reset", {"email": di.email})
    mail = await smtp.wait_for(di.email, "Passwort")
    assert "zurücksetzen" in str(mail["Subject"])


async def test_reset_token_is_single_use_even_at_once(
    gatekeeper: Gatekeeper, smtp: MailCatcher
) -> None:
    ed = await active_account(gatekeeper, "ed")
    token = await reset_token(gatekeeper, smtp, ed)
    body = {"email": ed.email, "token": token, "newPassword": NEW_PASSWORD}
    async with WebClient(gatekeeper) as client:
        answers = await asyncio.gather(
            client.post("/api/auth/reset-password", body),
            client.post("/api/auth/reset-password", body),
        )
    assert sorted(a[1]["status"] for a in answers) == ["invalid-token", "success"]


async def test_reset_links_expire_and_die_with_a_password_change(
    gatekeeper: Gatekeeper, smtp: MailCatcher
) -> None:
    fi = await active_account(gatekeeper, "fi")
    first = await reset_token(gatekeeper, smtp, fi)
    # At most an hour: an hour and a second later it is void.
    await gatekeeper.db.execute(
        "UPDATE email_token SET expires_at = created_at - 1000 WHERE purpose='reset-password'"
    )
    body = {"email": fi.email, "token": first, "newPassword": NEW_PASSWORD}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", body) == (
        200,
        {"status": "invalid-token"},
    )
    async with await logged_in(gatekeeper, fi) as client:
        await client.post("/api/auth/request-password-reset", {"email": fi.email})
        await wait_until(lambda: _mails(smtp, fi.email, 2))
        second = link_token(smtp.to(fi.email)[1], "reset-password")
        await client.post("/api/user/settings/sudo", {"password": fi.password})
        await client.post(
            "/api/user/settings/sensitive/change-password", {"newPassword": NEW_PASSWORD}
        )
        body = {"email": fi.email, "token": second, "newPassword": "yet another passphrase 9"}
        assert await client.post("/api/auth/reset-password", body) == (
            200,
            {"status": "invalid-token"},
        )


async def reset_token(gatekeeper: Gatekeeper, smtp: MailCatcher, account: Applicant) -> str:
    """Ask for a password reset mail for `account`, as anyone who knows the address may;
    the token of the mail's link."""
    await api(gatekeeper, "POST", "/api/auth/request-password-reset", {"email": account.email})
    return link_token(await smtp.wait_for(account.email, "reset"), "reset-password")


async def _mails(smtp: MailCatcher, to: str, count: int) -> bool:
    return len(smtp.to(to)) >= count


async def test_totp_code_works_once_even_at_once(gatekeeper: Gatekeeper) -> None:
    gu = await active_account(gatekeeper, "gu")
    async with await logged_in(gatekeeper, gu) as client:
        totp = await enable_totp(client, gu)
    code = later_code(totp)
    body = {"email": gu.email, "password": gu.password, "secondFactor": code}
    clients = [WebClient(gatekeeper), WebClient(gatekeeper)]
    answers = await asyncio.gather(
        *(c.post("/api/auth/login-with-second-factor", body) for c in clients)
    )
    for client in clients:
        await client.session.close()
    assert sorted(a[1]["loggedIn"] for a in answers) == [False, True]


async def test_wrong_code_counts_as_a_failed_attempt(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(
        registration={"require_email_confirmation": False},
        security={"lockout_failures": 3},
    )
    hu = await active_account(gatekeeper, "hu")
    async with await logged_in(gatekeeper, hu) as client:
        totp = await enable_totp(client, hu)
    body = {"email": hu.email, "password": hu.password, "secondFactor": "000000"}
    async with WebClient(gatekeeper) as client:
        for _ in range(2):
            assert await client.post("/api/auth/login-with-second-factor", body) == (
                200,
                {"loggedIn": False, "status": "invalid-credentials"},
            )
        _status, answer = await client.post("/api/auth/login-with-second-factor", body)
        assert answer["loggedIn"] is False
        assert "timeoutUntil" in answer  # the third failure locked the account
        right = {**body, "secondFactor": later_code(totp)}
        _status, answer = await client.post("/api/auth/login-with-second-factor", right)
        assert answer["loggedIn"] is False  # locked: the right code does not help


async def test_reset_refuses_weak_passwords_and_ends_every_session(
    gatekeeper: Gatekeeper, smtp: MailCatcher
) -> None:
    xan = await active_account(gatekeeper, "xan")
    remembered = await logged_in(gatekeeper, xan)
    request = (await gatekeeper.store.search(xan.localpart))[0]
    await Sessions(gatekeeper.db, gatekeeper.config.web).remember_device(request.id)
    token = await reset_token(gatekeeper, smtp, xan)
    # Only a hash of the link's token is stored.
    stored = await gatekeeper.db.fetch("SELECT token_hash FROM email_token")
    assert token not in [row["token_hash"] for row in stored]
    async with WebClient(gatekeeper) as client:
        body = {"email": xan.email, "token": token, "newPassword": "password1"}
        status, answer = await client.post("/api/auth/reset-password", body)
        assert (status, answer["fields"]) == (422, {"newPassword": "is too common; choose another"})
        body["newPassword"] = NEW_PASSWORD
        assert await client.post("/api/auth/reset-password", body) == (200, {"status": "success"})
    assert await remembered.get("/api/user-info") == (200, {})
    await remembered.session.close()
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM web_session") == 0
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM remembered_device") == 0
