"""Moderation after approval: !suspend, !unsuspend, !deactivate (with !confirm), !whois and
their admin API, end to end on the session's real Synapse; the Synapse backend's calls
on their own; and what a failing homeserver makes of them."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID
from pydantic import SecretStr
from ruamel.yaml import YAML

from gatekeeper.appservice.config import HomeserverConfig
from gatekeeper.appservice.homeserver.account_backend import ProvisioningRefused
from gatekeeper.appservice.homeserver.synapse_admin import SynapseAdmin
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.bot.commands_moderation import CONFIRM_SECONDS, ModerationCommands
from harness.matrix_user import MatrixUser
from harness.stalling_proxy import StallingProxy
from tests.conftest import HANG_TIMEOUT_S, SERVER_NAME, Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    WebClient,
    active_account,
    admin_room,
    api,
    can_log_in,
    is_edit_of,
    is_notice_for,
    logged_in,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
)

REFUSAL = "Sorry, only Gatekeeper admins can give me commands."
NO_CONFIRMATION = {"require_email_confirmation": False}
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
CONFIRM_RE = re.compile(r"send !confirm ([a-z0-9]+) within 5 minutes")


def as_token(synapse: Homeserver) -> str:
    return str(YAML(typ="safe").load(synapse.config_file.read_text())["appservice"]["as_token"])


@pytest.fixture(scope="module")
async def server_admin_token(synapse: Homeserver) -> str:
    answer = await synapse.server.register_user(
        f"mod-admin-{secrets.token_hex(4)}", "x" * 20, admin=True
    )
    return str(answer["access_token"])


@pytest.fixture(params=["shared_secret", "admin_token"])
async def backend(
    request: pytest.FixtureRequest, synapse: Homeserver, server_admin_token: str
) -> AsyncIterator[SynapseAdmin]:
    """The Synapse backend in both of its modes."""
    if request.param == "admin_token":
        config = HomeserverConfig(
            address=synapse.url, domain=SERVER_NAME, admin_token=SecretStr(server_admin_token)
        )
    else:
        config = HomeserverConfig(
            address=synapse.url,
            domain=SERVER_NAME,
            registration_shared_secret=SecretStr(synapse.server.shared_secret),
            admin_user="gk-moderation-admin",
        )
    client = SynapseAdmin(config, as_token(synapse))
    await client.start()
    yield client
    await client.close()


async def local_user(synapse: Homeserver, prefix: str = "local") -> MatrixUser:
    """A user registered on Synapse directly, not through Gatekeeper; logged in."""
    localpart = f"{prefix}-{secrets.token_hex(4)}"
    answer = await synapse.server.register_user(localpart, "local password 123")
    user = MatrixUser(synapse.url, answer["user_id"], answer["access_token"])
    synapse.users[localpart] = user  # closed with the session's Synapse
    return user


async def can_send(user: MatrixUser, room_id: RoomID) -> bool | str:
    """True if the message went out, else the homeserver's errcode."""
    try:
        await user.api.send_text(room_id, "hello")
    except MatrixRequestError as error:
        return error.errcode
    return True


async def synapse_view(synapse: Homeserver, token: str, user_id: str) -> dict[str, Any]:
    """What Synapse's admin API says of a user, asked without Gatekeeper."""
    config = HomeserverConfig(address=synapse.url, domain=SERVER_NAME, admin_token=SecretStr(token))
    client = SynapseAdmin(config, "unused")
    await client.start()
    try:
        return await client._user_details(user_id)
    finally:
        await client.close()


def moderation_commands(gatekeeper: Gatekeeper) -> ModerationCommands:
    assert gatekeeper.bot is not None
    owner = gatekeeper.bot.commands["confirm"].handler.__self__  # type: ignore[attr-defined]
    assert isinstance(owner, ModerationCommands)
    return owner


async def moderation_rows(gatekeeper: Gatekeeper, user_id: str) -> list[tuple[Any, ...]]:
    rows = await gatekeeper.db.fetch(
        "SELECT action, erase, actor, request_id, reason, outcome, error"
        " FROM account_moderation WHERE user_id=$1 ORDER BY at",
        user_id,
    )
    return [
        (r["action"], bool(r["erase"]), r["actor"], r["request_id"], r["reason"], r["outcome"])
        + ((r["error"],) if r["error"] else ())
        for r in rows
    ]


# --- the Synapse backend on its own ---------------------------------------------------------


async def test_backend_suspends_unsuspends_and_reports(
    backend: SynapseAdmin, synapse: Homeserver
) -> None:
    user = await local_user(synapse)
    room_id = await user.api.create_room()
    status = await backend.account_status(user.user_id)
    assert (status.exists, status.suspended, status.deactivated) == (True, False, False)

    await backend.set_suspended(user.user_id, True)
    assert (await backend.account_status(user.user_id)).suspended
    assert await can_send(user, room_id) == "M_USER_SUSPENDED"
    await backend.set_suspended(user.user_id, True)  # again: no error

    await backend.set_suspended(user.user_id, False)
    assert not (await backend.account_status(user.user_id)).suspended
    assert await can_send(user, room_id) is True


async def test_backend_deactivates(backend: SynapseAdmin, synapse: Homeserver) -> None:
    localpart = f"leaving-{secrets.token_hex(4)}"
    await synapse.server.register_user(localpart, "leaving password 1")
    leaving = Applicant(localpart, "unused@example.org", "leaving password 1")
    user_id = backend.user_id(localpart)

    await backend.deactivate(user_id, erase=True)

    status = await backend.account_status(user_id)
    assert (status.exists, status.deactivated) == (True, True)
    assert not await can_log_in(synapse.url, leaving)
    await backend.deactivate(user_id, erase=False)  # again: no error


async def test_backend_on_an_unknown_user(backend: SynapseAdmin) -> None:
    user_id = backend.user_id(f"nobody-{secrets.token_hex(4)}")
    assert not (await backend.account_status(user_id)).exists
    for call in (backend.set_suspended(user_id, True), backend.deactivate(user_id, False)):
        with pytest.raises(ProvisioningRefused) as refused:
            await call
        assert (refused.value.status, refused.value.errcode) == (404, "M_NOT_FOUND")


async def test_backend_with_a_wrong_token_is_refused_without_showing_it(
    synapse: Homeserver,
) -> None:
    user = await local_user(synapse)
    config = HomeserverConfig(
        address=synapse.url, domain=SERVER_NAME, admin_token=SecretStr("wrong-admin-token")
    )
    client = SynapseAdmin(config, "unused")
    await client.start()
    try:
        for call in (
            client.set_suspended(user.user_id, True),
            client.deactivate(user.user_id, False),
            client.account_status(user.user_id),
        ):
            with pytest.raises(ProvisioningRefused) as refused:
                await call
            assert refused.value.status == 401
            assert "wrong-admin-token" not in str(refused.value)
    finally:
        await client.close()


# --- end to end in the admin room ----------------------------------------------------------


async def approved_in_room(
    gatekeeper: Gatekeeper, alice: MatrixUser, room_id: RoomID, prefix: str
) -> tuple[Applicant, str, dict[str, Any]]:
    """An applicant approved by alice in the room, once their account exists: them, their
    request's ID and the request's notice."""
    applicant = new_applicant(prefix)
    assert (await sign_up(gatekeeper, applicant))[0] == 201
    notice = await alice.wait_for(is_notice_for(room_id, applicant))
    request_id = await request_id_of(gatekeeper, applicant)
    assert (await alice.reply_to(room_id, f"!approve {request_id}", BOT)).startswith("Approved")
    await wait_for_state(gatekeeper, request_id, "active")
    return applicant, request_id, notice


async def test_suspend_whois_and_deactivate_an_account_made_through_gatekeeper(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, synapse: Homeserver, smtp: MailCatcher
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    ann, request_id, notice = await approved_in_room(gatekeeper, alice, room_id, "ann")
    ann_matrix = await MatrixUser.login(synapse.url, ann.localpart, ann.password)
    synapse.users[ann.localpart] = ann_matrix  # closed with the session's Synapse
    ann_room = await ann_matrix.api.create_room()
    web = await logged_in(gatekeeper, ann)

    # Suspended: Synapse refuses what they send; lifted: they send again.
    answer = await alice.reply_to(room_id, f"!suspend {ann.user_id} spam links", BOT)
    assert answer == (
        f"Suspended {ann.user_id} (request {request_id}): they can still read, but not send. "
        f"!unsuspend {ann.user_id} lifts it."
    )
    assert await can_send(ann_matrix, ann_room) == "M_USER_SUSPENDED"

    whois = (await alice.reply_to(room_id, f"!whois {ann.localpart}", BOT)).split("\n")
    assert whois[0] == ann.user_id
    assert whois[1].startswith(f"Request: {request_id} (active), asked ")
    assert whois[2].startswith(f"Approved by {alice.user_id} on ")
    assert whois[3:6] == [
        "Email: a***@example.org",
        "2FA: off",
        "Suspended: yes · deactivated: no",
    ]
    assert whois[6].startswith(f"Last moderation: suspend by {alice.user_id} on ")
    assert whois[6].endswith("(spam links)")
    assert len(whois) == 7

    answer = await alice.reply_to(room_id, f"!unsuspend {ann.localpart}", BOT)
    assert answer == f"Unsuspended {ann.user_id} (request {request_id}): they can send again."
    assert await can_send(ann_matrix, ann_room) is True

    # Deactivating asks first, and changes nothing until confirmed.
    answer = await alice.reply_to(room_id, f"!deactivate {ann.user_id}", BOT)
    assert answer.startswith(
        f"⚠️ Deactivating {ann.user_id} (request {request_id}) cannot be undone: they can no "
        "longer log in to Matrix. Their Gatekeeper sessions end, and they can no longer log "
        "in to Gatekeeper's site.\n"
    )
    match = CONFIRM_RE.search(answer)
    assert match, answer
    assert await can_log_in(synapse.url, ann)
    assert (await web.get("/api/user-info"))[1]["status"] == "active"
    assert await alice.reply_to(room_id, "!confirm nosuch", BOT) == (
        "No deactivation waits for the code nosuch (codes last 5 minutes). Send !deactivate again."
    )

    answer = await alice.reply_to(room_id, f"!confirm {match[1]}", BOT)

    assert answer == (
        f"Deactivated {ann.user_id} (request {request_id}). Their Gatekeeper sessions are ended."
    )
    assert not await can_log_in(synapse.url, ann)
    assert await web.get("/api/user-info") == (200, {})  # the session is gone
    await web.session.close()
    async with WebClient(gatekeeper) as again:
        status, body = await again.post(
            "/api/auth/login", {"email": ann.email, "password": ann.password}
        )
        assert (status, body) == (200, {"status": "invalid-credentials"})
    # The request shows the new state, in the API and in its notice; the code is used up.
    _, shown = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
    assert shown["state"] == "deactivated"
    assert ("active", "deactivated", alice.user_id) in [
        (e["from"], e["to"], e["actor"]) for e in shown["history"]
    ]
    await alice.wait_for(is_edit_of(notice["event_id"], f"account {ann.user_id} created, since"))
    assert (await alice.reply_to(room_id, f"!confirm {match[1]}", BOT)).startswith(
        f"No deactivation waits for the code {match[1]}"
    )
    assert (await alice.reply_to(room_id, f"!suspend {ann.localpart}", BOT)) == (
        f"{ann.user_id} is deactivated; there is nothing to suspend any more."
    )
    after = await alice.reply_to(room_id, f"!whois {ann.user_id}", BOT)
    assert f"Request: {request_id} (deactivated)" in after
    assert "Suspended: no · deactivated: yes" in after
    assert f"Last moderation: deactivate by {alice.user_id}" in after

    assert await moderation_rows(gatekeeper, ann.user_id) == [
        ("suspend", False, alice.user_id, request_id, "spam links", "done"),
        ("unsuspend", False, alice.user_id, request_id, None, "done"),
        ("deactivate", False, alice.user_id, request_id, None, "done"),
    ]

    # The address stays the deactivated account's: a new sign-up with it is answered as
    # usual, and its owner hears of it without a reset link that would lead nowhere.
    newcomer = new_applicant("ann-again")
    status, _ = await sign_up(gatekeeper, Applicant(newcomer.localpart, ann.email))
    assert status == 201
    mail = await smtp.wait_for(ann.email, "deactivated")
    assert newcomer.user_id in mail.get_content()
    assert "/reset-password" not in mail.get_content()


async def test_who_may_be_moderated_and_by_whom(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    bob: MatrixUser,
    mallory: MatrixUser,
    synapse: Homeserver,
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration=NO_CONFIRMATION,
        admin_room={"admins": [alice.user_id, bob.user_id]},
    )
    await alice.api.invite_user(room_id, mallory.user_id)
    for user in (bob, mallory):  # bob as an admin by the config, invited by the bot
        await user.wait_for_invite(room_id)
        await user.api.join_room_by_id(room_id)
    outsider = await local_user(synapse)
    ben = await active_account(gatekeeper, "ben")

    # Not made through Gatekeeper: refused, though !whois tells what it is.
    refused = (
        f"{outsider.user_id} did not sign up through Gatekeeper, so I leave that account alone "
        "(admin_room.moderate_all_local_users is false)."
    )
    assert await alice.reply_to(room_id, f"!suspend {outsider.user_id}", BOT) == refused
    assert await alice.reply_to(room_id, f"!deactivate {outsider.user_id}", BOT) == refused
    whois = (await alice.reply_to(room_id, f"!whois {outsider.user_id}", BOT)).split("\n")
    assert whois == [
        outsider.user_id,
        "Not made through Gatekeeper: no sign-up request.",
        "Suspended: no · deactivated: no",
        "Last moderation: none",
        f"Moderation commands: refused. {refused}",
    ]
    # Never the bot, Gatekeeper's own server admin, the admins, or another server's users.
    assert await alice.reply_to(room_id, f"!suspend {BOT}", BOT) == (
        f"{BOT} is Gatekeeper's bot: I do not moderate myself."
    )
    assert (await alice.reply_to(room_id, "!deactivate gatekeeper-admin", BOT)).startswith(
        f"@gatekeeper-admin:{SERVER_NAME} is Gatekeeper's own server admin user"
    )
    assert await alice.reply_to(room_id, "!suspend bob", BOT) == (
        f"{bob.user_id} is a Gatekeeper admin (admin_room.admins): take them off that list first."
    )
    assert await alice.reply_to(room_id, "!suspend @ann:elsewhere.example", BOT) == (
        f"@ann:elsewhere.example is not a user of {SERVER_NAME}; "
        "I only moderate accounts of this homeserver."
    )
    assert (await alice.reply_to(room_id, "!suspend @:x", BOT)).startswith("“@:x” is not a user")
    assert await alice.reply_to(room_id, "!suspend", BOT) == "Usage: !suspend <user> [reason]"
    # Not an admin: refused like any other command, and nothing happens.
    for command in (f"!suspend {ben.localpart}", f"!whois {ben.localpart}", "!confirm abc"):
        assert await mallory.reply_to(room_id, command, BOT) == REFUSAL

    # Only the admin who asked confirms, and only for 5 minutes.
    asked = await alice.reply_to(room_id, f"!deactivate {ben.localpart} --erase gone", BOT)
    assert "With --erase, Synapse also erases them" in asked
    match = CONFIRM_RE.search(asked)
    assert match, asked
    assert await bob.reply_to(room_id, f"!confirm {match[1]}", BOT) == (
        f"Only {alice.user_id}, who asked for this deactivation, can confirm it."
    )
    commands = moderation_commands(gatekeeper)
    now = commands.clock()
    commands.clock = lambda: now + CONFIRM_SECONDS + 1
    assert (await alice.reply_to(room_id, f"!confirm {match[1]}", BOT)).startswith(
        f"No deactivation waits for the code {match[1]}"
    )
    assert await can_log_in(synapse.url, ben)
    assert await moderation_rows(gatekeeper, ben.user_id) == []
    assert await moderation_rows(gatekeeper, outsider.user_id) == []


async def test_moderate_all_local_users_reaches_accounts_made_elsewhere(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, synapse: Homeserver
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, admin_room={"moderate_all_local_users": True}
    )
    outsider = await local_user(synapse)
    outsider_room = await outsider.api.create_room()

    answer = await alice.reply_to(room_id, f"!suspend {outsider.user_id}", BOT)

    assert answer.startswith(f"Suspended {outsider.user_id}: they can still read")
    assert await can_send(outsider, outsider_room) == "M_USER_SUSPENDED"
    whois = await alice.reply_to(room_id, f"!whois {outsider.user_id}", BOT)
    assert "Suspended: yes" in whois
    assert "Moderation commands" not in whois
    await alice.reply_to(room_id, f"!unsuspend {outsider.user_id}", BOT)
    assert await can_send(outsider, outsider_room) is True
    # Still never the admins or the bot.
    assert "is a Gatekeeper admin" in await alice.reply_to(room_id, "!deactivate alice", BOT)
    assert "is Gatekeeper's bot" in await alice.reply_to(room_id, f"!deactivate {BOT}", BOT)

    asked = await alice.reply_to(room_id, f"!deactivate {outsider.user_id}", BOT)
    assert "Gatekeeper sessions" not in asked
    match = CONFIRM_RE.search(asked)
    assert match, asked
    assert await alice.reply_to(room_id, f"!confirm {match[1]}", BOT) == (
        f"Deactivated {outsider.user_id}."
    )
    assert "deactivated: yes" in await alice.reply_to(room_id, f"!whois {outsider.user_id}", BOT)
    assert await moderation_rows(gatekeeper, outsider.user_id) == [
        ("suspend", False, alice.user_id, None, None, "done"),
        ("unsuspend", False, alice.user_id, None, None, "done"),
        ("deactivate", False, alice.user_id, None, None, "done"),
    ]


# --- the admin API ----------------------------------------------------------------------


async def test_admin_api_moderates_with_its_token(
    start_gatekeeper: StartGatekeeper, synapse: Homeserver, server_admin_token: str
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    cy = await active_account(gatekeeper, "cy")
    request_id = await request_id_of(gatekeeper, cy)
    web = await logged_in(gatekeeper, cy)
    users = "/api/admin/users"

    # Without the token, or with a wrong one, like the other admin routes.
    for method, path in (
        ("GET", f"{users}/{cy.localpart}"),
        ("POST", f"{users}/{cy.localpart}/suspend"),
        ("POST", f"{users}/{cy.localpart}/deactivate"),
    ):
        status, body = await api(gatekeeper, method, path)
        assert (status, body["errcode"]) == (401, "GK_UNAUTHORIZED")
        async with WebClient(gatekeeper) as client:
            status, body = await client.request(
                method, path, headers={"Authorization": "Bearer wrong"}
            )
        assert (status, body["errcode"]) == (403, "GK_FORBIDDEN")
    assert not (await synapse_view(synapse, server_admin_token, cy.user_id))["suspended"]

    status, body = await api(
        gatekeeper, "POST", f"{users}/{cy.user_id}/suspend", {"reason": "spam"}, admin=True
    )
    assert (status, body) == (
        200,
        {"userId": cy.user_id, "action": "suspend", "registrationId": request_id},
    )
    assert (await synapse_view(synapse, server_admin_token, cy.user_id))["suspended"]
    status, body = await api(gatekeeper, "GET", f"{users}/{cy.localpart}", admin=True)
    assert status == 200
    assert body["registration"]["id"] == request_id
    assert body["registration"]["email"] == cy.email
    assert (body["twoFactor"], body["statusProblem"], body["moderationRefused"]) == (
        False,
        None,
        None,
    )
    assert body["status"] == {"exists": True, "suspended": True, "deactivated": False}
    assert body["lastAction"]["action"] == "suspend"
    assert (body["lastAction"]["actor"], body["lastAction"]["reason"]) == ("admin-api", "spam")

    status, body = await api(gatekeeper, "POST", f"{users}/{cy.localpart}/unsuspend", admin=True)
    assert (status, body["action"]) == (200, "unsuspend")
    status, body = await api(
        gatekeeper, "POST", f"{users}/{cy.localpart}/deactivate", {"erase": True}, admin=True
    )
    assert (status, body["action"]) == (200, "deactivate")
    assert not await can_log_in(synapse.url, cy)
    assert await web.get("/api/user-info") == (200, {})
    await web.session.close()
    view = await synapse_view(synapse, server_admin_token, cy.user_id)
    assert (view["deactivated"], view["erased"]) == (True, True)
    await wait_for_state(gatekeeper, request_id, "deactivated")
    status, body = await api(gatekeeper, "POST", f"{users}/{cy.localpart}/suspend", admin=True)
    assert (status, body["errcode"]) == (409, "GK_WRONG_STATE")

    # Refusals: another server, a user not made here, the bot, a bad body.
    outsider = await local_user(synapse)
    for path, payload, expected in (
        (f"{users}/@x:elsewhere.example/suspend", None, (400, "GK_NOT_LOCAL_USER")),
        (f"{users}/{outsider.user_id}/suspend", None, (403, "GK_NOT_MODERATED")),
        (f"{users}/{BOT}/deactivate", None, (403, "GK_PROTECTED_USER")),
        (f"{users}/{outsider.user_id}/deactivate", {"erase": "yes"}, (422, "GK_INVALID_FIELD")),
    ):
        status, body = await api(gatekeeper, "POST", path, payload, admin=True)
        assert (status, body["errcode"]) == expected, body
    assert not (await synapse_view(synapse, server_admin_token, outsider.user_id))["suspended"]
    assert await moderation_rows(gatekeeper, cy.user_id) == [
        ("suspend", False, "admin-api", request_id, "spam", "done"),
        ("unsuspend", False, "admin-api", request_id, None, "done"),
        ("deactivate", True, "admin-api", request_id, None, "done"),
    ]
    assert await moderation_rows(gatekeeper, outsider.user_id) == []

    # With the admin API off, its user routes are not there either.
    await gatekeeper.stop()
    gatekeeper = await start_gatekeeper(web={"admin_api_token": None})
    status, body = await api(gatekeeper, "GET", f"{users}/{cy.localpart}")
    assert (status, body["errcode"]) == (404, "GK_NOT_FOUND")


# --- a homeserver that refuses or does not answer -----------------------------------------


@pytest.fixture
async def stalling_synapse(synapse: Homeserver) -> AsyncIterator[StallingProxy]:
    proxy = StallingProxy("127.0.0.1", synapse.server.settings.port)
    await proxy.start()
    yield proxy
    proxy.forward()
    await proxy.stop()


@SQLITE_ONLY
async def test_a_failing_homeserver_is_said_plainly_and_recorded_as_failed(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    synapse: Homeserver,
    stalling_synapse: StallingProxy,
    server_admin_token: str,
) -> None:
    gatekeeper = await start_gatekeeper(
        homeserver={
            "address": stalling_synapse.url,
            "request_timeout": HANG_TIMEOUT_S,
            "admin_token": "wrong-admin-token",
        },
        admin_room={"moderate_all_local_users": True},
    )
    room_id = await admin_room(gatekeeper, alice)
    outsider = await local_user(synapse)

    # A refusal (here: the admin token is wrong) is passed on, the token is not.
    answer = await alice.reply_to(room_id, f"!suspend {outsider.user_id} spam", BOT)
    assert answer.startswith(f"Synapse refused: suspending {outsider.user_id}: HTTP 401 ")
    assert answer.endswith(". Nothing changed.")
    assert "wrong-admin-token" not in answer
    whois = await alice.reply_to(room_id, f"!whois {outsider.user_id}", BOT)
    assert "Account: unknown (Synapse refused: looking up" in whois
    assert "Last moderation: suspend by" in whois
    assert "FAILED: suspending" in whois
    status, body = await api(
        gatekeeper, "POST", f"/api/admin/users/{outsider.user_id}/deactivate", admin=True
    )
    assert (status, body["errcode"]) == (502, "GK_HOMESERVER_REFUSED")

    # No answer at all: the admin API says so after homeserver.request_timeout.
    stalling_synapse.hang()
    status, body = await api(
        gatekeeper, "POST", f"/api/admin/users/{outsider.user_id}/suspend", admin=True
    )
    stalling_synapse.forward()
    assert (status, body["errcode"]) == (503, "GK_HOMESERVER_UNAVAILABLE")
    assert body["error"] == (
        "Synapse did not answer; nothing is recorded as done. "
        "Try again in a moment: repeating it is safe."
    )

    assert not (await synapse_view(synapse, server_admin_token, outsider.user_id))["suspended"]
    rows = await moderation_rows(gatekeeper, outsider.user_id)
    assert [row[:6] for row in rows] == [
        ("suspend", False, alice.user_id, None, "spam", "failed"),
        ("deactivate", False, "admin-api", None, None, "failed"),
        ("suspend", False, "admin-api", None, None, "failed"),
    ]
    assert "HTTP 401" in rows[0][6]
    assert "wrong-admin-token" not in rows[0][6]
    assert f"no answer within {HANG_TIMEOUT_S:g} s" in rows[2][6]
