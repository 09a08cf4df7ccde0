"""registration.password: after_approval, end to end on Synapse: the sign-up asks for no
password, nothing about one is ever stored, and the welcome mail's single-use link sets it
on the Matrix account and for Gatekeeper's own login."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gatekeeper.appservice.runtime.program import Gatekeeper
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    Applicant,
    WebClient,
    api,
    can_log_in,
    link_token,
    new_applicant,
    request_id_of,
    wait_for_state,
    web_url,
)

pytestmark = pytest.mark.synapse

AFTER_APPROVAL = {"password": "after_approval", "require_email_confirmation": False}
CHOSEN = "the password I chose after approval"


async def password_columns(gatekeeper: Gatekeeper, applicant: Applicant) -> tuple[str, Any]:
    row = await gatekeeper.db.fetchrow(
        "SELECT password_hash, password_encrypted FROM registration_request WHERE localpart=$1",
        applicant.localpart,
    )
    assert row is not None
    return row["password_hash"], row["password_encrypted"]


async def sign_up_without_password(gatekeeper: Gatekeeper, applicant: Applicant) -> None:
    body = {"userName": applicant.localpart, "email": applicant.email, "language": "en"}
    assert await api(gatekeeper, "POST", "/api/auth/sign-up", body) == (
        201,
        {"status": "pending", "userId": applicant.user_id},
    )


@pytest.mark.parametrize("homeserver_access", ["shared_secret_only", "admin_token"])
async def test_the_password_is_chosen_after_approval_and_never_stored_before(
    start_gatekeeper: StartGatekeeper,
    synapse: Homeserver,
    smtp: MailCatcher,
    homeserver_access: str,
) -> None:
    homeserver: dict[str, Any] = {}
    if homeserver_access == "admin_token":
        admin = await synapse.server.register_user(
            f"after-approval-admin-{int(time.time() * 1000)}", "server admin password 9", admin=True
        )
        homeserver = {"admin_token": admin["access_token"]}
    gatekeeper = await start_gatekeeper(registration=AFTER_APPROVAL, homeserver=homeserver)
    ann = new_applicant()

    # The form asks for no password, and the API refuses one rather than drop it.
    async with (
        WebClient(gatekeeper) as client,
        client.session.get(web_url(gatekeeper) + "/sign-up") as page,
    ):
        html = await page.text()
    assert 'name="password"' not in html
    assert "You choose your password after approval" in html
    status, body = await api(
        gatekeeper,
        "POST",
        "/api/auth/sign-up",
        {"userName": ann.localpart, "email": ann.email, "password": ann.password},
    )
    assert (status, body["fields"]) == (
        422,
        {"password": "is not asked for here: you choose it after approval"},
    )
    await sign_up_without_password(gatekeeper, ann)
    assert await password_columns(gatekeeper, ann) == ("", None)
    # The OpenAPI document says so too.
    _, document = await api(gatekeeper, "GET", "/api/openapi.json")
    body = document["paths"]["/api/auth/sign-up"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert "password" not in schema["properties"]
    assert schema["required"] == ["userName", "email"]

    request_id = await request_id_of(gatekeeper, ann)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")
    assert await password_columns(gatekeeper, ann) == ("", None)
    # No password opens the account yet, on Matrix or here.
    assert not await can_log_in(synapse.url, ann)
    for tried in (ann.password, CHOSEN):
        assert await api(
            gatekeeper, "POST", "/api/auth/login", {"email": ann.email, "password": tried}
        ) == (200, {"status": "invalid-credentials"})

    welcome = await smtp.wait_for(ann.email, "choose its password")
    text = welcome.get_content()
    assert ann.user_id in text
    assert synapse.url in text
    assert f"{web_url(gatekeeper)}/login" in text
    token = link_token(welcome, "reset-password")

    reset = {"email": ann.email, "token": token, "newPassword": CHOSEN}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", reset) == (
        200,
        {"status": "success"},
    )
    assert await can_log_in(synapse.url, ann, CHOSEN)
    async with WebClient(gatekeeper) as client:
        assert await client.post("/api/auth/login", {"email": ann.email, "password": CHOSEN}) == (
            200,
            {"status": "logged-in"},
        )
    # The link works once.
    again = {**reset, "newPassword": "someone else's password 7"}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", again) == (
        200,
        {"status": "invalid-token"},
    )
    assert await can_log_in(synapse.url, ann, CHOSEN)
    password_hash, encrypted = await password_columns(gatekeeper, ann)
    assert password_hash.startswith("$argon2")
    assert encrypted is None


async def test_an_expired_link_is_renewed_with_forgot_password(
    start_gatekeeper: StartGatekeeper, synapse: Homeserver, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(registration=AFTER_APPROVAL)
    bea = new_applicant("bea")
    await sign_up_without_password(gatekeeper, bea)
    request_id = await request_id_of(gatekeeper, bea)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    welcome = await smtp.wait_for(bea.email, "choose its password")
    expired = link_token(welcome, "reset-password")
    await gatekeeper.db.execute("UPDATE email_token SET expires_at = 0")
    reset = {"email": bea.email, "token": expired, "newPassword": CHOSEN}
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", reset) == (
        200,
        {"status": "invalid-token"},
    )

    assert (
        await api(gatekeeper, "POST", "/api/auth/request-password-reset", {"email": bea.email})
    )[0] == 200
    fresh = link_token(await smtp.wait_for(bea.email, "Reset your password"), "reset-password")
    reset["token"] = fresh
    assert await api(gatekeeper, "POST", "/api/auth/reset-password", reset) == (
        200,
        {"status": "success"},
    )
    assert await can_log_in(synapse.url, bea, CHOSEN)
    assert await password_columns(gatekeeper, bea) != ("", None)
    assert (await password_columns(gatekeeper, bea))[1] is None
