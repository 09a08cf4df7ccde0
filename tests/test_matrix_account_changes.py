"""Password and email changes reach the Matrix account, or the person is told they did not.

With only `homeserver.registration_shared_secret` (how `make demo` runs), Gatekeeper
makes its own Synapse admin user with that secret and uses its token (issue 11, item 4).
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

import aiohttp
import pytest

from gatekeeper.appservice.homeserver.synapse_admin import ADMIN_TOKEN_STATE_KEY
from gatekeeper.appservice.runtime.program import Gatekeeper
from tests.conftest import SERVER_NAME, Homeserver, MailCatcher, StartGatekeeper, stop_or_explain
from tests.flows import (
    Applicant,
    WebClient,
    active_account,
    api,
    can_log_in,
    link_token,
    logged_in,
    new_applicant,
    request_id_of,
    sign_up,
    wait_for_state,
    web_url,
)

RESET_PASSWORD = "a reset passphrase of mine 31"
CHANGED_PASSWORD = "a changed passphrase of mine 32"
ADMIN_USER = f"@gatekeeper-admin:{SERVER_NAME}"
CHANGE_PASSWORD = "/api/user/settings/sensitive/change-password"
NO_CONFIRMATION = {"require_email_confirmation": False}


@pytest.fixture
async def gatekeeper(start_gatekeeper: StartGatekeeper) -> Gatekeeper:
    """Only the shared secret, no admin token: the demo's configuration."""
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    assert gatekeeper.config.homeserver.admin_token is None
    assert gatekeeper.config.homeserver.registration_shared_secret is not None
    return gatekeeper


async def synapse_call(
    synapse: Homeserver, method: str, path: str, token: str, body: object = None
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, synapse.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json()


async def reset_with_mail(
    client: WebClient, smtp: MailCatcher, who: Applicant, new_password: str
) -> tuple[int, dict[str, str]]:
    await client.post("/api/auth/request-password-reset", {"email": who.email})
    mail = await smtp.wait_for(who.email, "reset", timeout=20)
    smtp.messages.remove(mail)  # the next reset of the test waits for its own mail
    token = link_token(mail, "reset-password")
    return await client.post(
        "/api/auth/reset-password",
        {"email": who.email, "token": token, "newPassword": new_password},
    )


async def stored_admin_token(gatekeeper: Gatekeeper) -> str:
    """The admin token Gatekeeper keeps: encrypted in bot_state, never in the clear."""
    ciphertext = await gatekeeper.db.fetchval(
        "SELECT value FROM bot_state WHERE key=$1", f"{ADMIN_TOKEN_STATE_KEY} {ADMIN_USER}"
    )
    assert ciphertext is not None
    token = gatekeeper.started.box.decrypt(str(ciphertext))
    assert token not in str(ciphertext)
    return token


async def test_reset_and_change_set_the_matrix_password_with_the_shared_secret_alone(
    gatekeeper: Gatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    ann = await active_account(gatekeeper, "ann")
    async with WebClient(gatekeeper) as client:
        assert await reset_with_mail(client, smtp, ann, RESET_PASSWORD) == (
            200,
            {"status": "success"},
        )
    assert await can_log_in(synapse.url, ann, RESET_PASSWORD)
    assert not await can_log_in(synapse.url, ann)

    # The admin user's token is kept encrypted, and it is a server admin's.
    token = await stored_admin_token(gatekeeper)
    status, whoami = await synapse_call(synapse, "GET", "/_matrix/client/v3/account/whoami", token)
    assert (status, whoami["user_id"]) == (200, ADMIN_USER)
    # Someone logs that session out on Synapse: the next change logs in again (after a 401).
    assert (await synapse_call(synapse, "POST", "/_matrix/client/v3/logout", token, {}))[0] == 200

    after_reset = Applicant(ann.localpart, ann.email, RESET_PASSWORD)
    async with await logged_in(gatekeeper, after_reset) as client:
        await client.post("/api/user/settings/sudo", {"password": RESET_PASSWORD})
        assert await client.post(CHANGE_PASSWORD, {"newPassword": CHANGED_PASSWORD}) == (
            200,
            {"status": "success"},
        )
    assert await can_log_in(synapse.url, ann, CHANGED_PASSWORD)
    assert not await can_log_in(synapse.url, ann, RESET_PASSWORD)
    assert await stored_admin_token(gatekeeper) != token


async def test_a_password_reset_before_approval_is_the_one_the_account_gets(
    gatekeeper: Gatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    """The page says "changed" while the request waits: the account made later must open
    with the new password, not with the one given at sign-up."""
    eve = new_applicant("eve")
    assert (await sign_up(gatekeeper, eve))[0] == 201
    async with WebClient(gatekeeper) as client:
        assert await reset_with_mail(client, smtp, eve, RESET_PASSWORD) == (
            200,
            {"status": "success"},
        )
    request_id = await request_id_of(gatekeeper, eve)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")
    assert await can_log_in(synapse.url, eve, RESET_PASSWORD)
    assert not await can_log_in(synapse.url, eve)


async def test_email_change_reaches_synapse_with_the_shared_secret_alone(
    gatekeeper: Gatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    cy = await active_account(gatekeeper, "cy")
    new_email = f"cy-new-{secrets.token_hex(3)}@example.org"
    async with await logged_in(gatekeeper, cy) as client:
        await client.post("/api/user/settings/sudo", {"password": cy.password})
        assert await client.post(
            "/api/user/settings/sensitive/change-email", {"newEmail": new_email}
        ) == (200, {})
        token = link_token(await smtp.wait_for(new_email, "confirm"), "confirm-email-change")
        assert await client.post("/api/user/settings/confirm-email-change", {"token": token}) == (
            200,
            {"status": "new-email-confirmed", "email": new_email},
        )
    admin = await synapse.server.register_user(
        f"threepid-reader-{secrets.token_hex(3)}", "reader password 123", admin=True
    )
    status, user = await synapse_call(
        synapse,
        "GET",
        f"/_synapse/admin/v2/users/{quote(cy.user_id, safe='')}",
        admin["access_token"],
    )
    assert status == 200
    assert [t["address"] for t in user["threepids"]] == [new_email]  # type: ignore[attr-defined]


async def form_post(
    gatekeeper: Gatekeeper, path: str, fields: dict[str, str], language: str
) -> tuple[int, str]:
    """A browser's form post: the CSRF cookie of a GET, sent back in the form."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        headers = {"Accept-Language": language}
        async with session.get(web_url(gatekeeper) + path, headers=headers) as response:
            assert response.status == 200
        csrf = next(c.value for c in session.cookie_jar if c.key == "CSRF-Token")
        async with session.post(
            web_url(gatekeeper) + path, data={**fields, "csrf_token": csrf}, headers=headers
        ) as response:
            return response.status, await response.text()


async def test_a_change_that_cannot_reach_matrix_says_so_plainly(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    first = await start_gatekeeper(registration=NO_CONFIRMATION)
    dee = await active_account(first, "dee")
    await stop_or_explain(first)
    # The same database, but no way to act on Synapse any more.
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, homeserver={"registration_shared_secret": None}
    )

    async with WebClient(gatekeeper) as client:
        status, answer = await reset_with_mail(client, smtp, dee, RESET_PASSWORD)
    assert (status, answer["status"]) == (200, "matrix-unchanged")
    assert "Matrix account still has its old password" in answer["message"]
    assert await can_log_in(synapse.url, dee)  # Matrix kept the old password, as we said

    await reset_page_in_german(gatekeeper, smtp, dee)

    after_reset = Applicant(dee.localpart, dee.email, CHANGED_PASSWORD)
    async with await logged_in(gatekeeper, after_reset) as client:
        await client.post("/api/user/settings/sudo", {"password": CHANGED_PASSWORD})
        status, answer = await client.post(CHANGE_PASSWORD, {"newPassword": RESET_PASSWORD})
        assert (status, answer["status"]) == (200, "matrix-unchanged")
        new_email = f"dee-new-{secrets.token_hex(3)}@example.org"
        await client.post("/api/user/settings/sensitive/change-email", {"newEmail": new_email})
        token = link_token(await smtp.wait_for(new_email, "confirm"), "confirm-email-change")
        status, answer = await client.post(
            "/api/user/settings/confirm-email-change", {"token": token}
        )
        assert (status, answer["status"], answer["email"]) == (200, "matrix-unchanged", new_email)
        assert "Matrix" in answer["message"]
    assert await can_log_in(synapse.url, dee)


async def reset_page_in_german(gatekeeper: Gatekeeper, smtp: MailCatcher, who: Applicant) -> None:
    """The reset page says the Matrix password is still the old one, not "changed"."""
    async with WebClient(gatekeeper) as client:
        await client.post("/api/auth/request-password-reset", {"email": who.email})
    token = link_token(await smtp.wait_for(who.email, "reset"), "reset-password")
    status, html = await form_post(
        gatekeeper,
        f"/reset-password?token={token}",
        {"token": token, "email": who.email, "newPassword": CHANGED_PASSWORD},
        "de",
    )
    assert status == 200
    assert "Ihr Passwort ist geändert. Sie können sich jetzt anmelden." not in html
    assert "Matrix-Konto hat noch sein altes Passwort" in html
