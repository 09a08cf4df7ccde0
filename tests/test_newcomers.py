"""New accounts: made with the admin API when a token is set, and brought into the
newcomer rooms, public or invite-only, with the admin token or the shared secret alone."""

from __future__ import annotations

import logging
import secrets

import aiohttp
import pytest
from mautrix.types import RoomCreatePreset, RoomID, UserID

from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    can_log_in,
    confirmed_applicant,
    link_token,
    new_applicant,
    pass_time,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
)
from tests.flows import api as gatekeeper_api


async def test_admin_token_sets_profile_email_and_joins_rooms(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    synapse: Homeserver,
    smtp: MailCatcher,
) -> None:
    admin = await synapse.server.register_user(
        f"server-admin-{secrets.token_hex(3)}", "admin password 123", admin=True
    )
    lobby = await alice.api.create_room(preset=RoomCreatePreset.PUBLIC, name="Lobby")
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        homeserver={"admin_token": admin["access_token"]},
        registration={"newcomer_rooms": [lobby]},
    )
    lou, _ = await confirmed_applicant(gatekeeper, smtp, "lou")
    request_id = await request_id_of(gatekeeper, lou)

    await alice.reply_to(room_id, f"!approve {request_id}", BOT)

    await wait_for_state(gatekeeper, request_id, "active")
    assert await can_log_in(synapse.url, lou)
    headers = {"Authorization": f"Bearer {admin['access_token']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{synapse.url}/_synapse/admin/v2/users/{lou.user_id}", headers=headers) as r,
    ):
        account = await r.json()
    assert account["displayname"] == lou.localpart
    assert [(t["medium"], t["address"]) for t in account["threepids"]] == [("email", lou.email)]

    async def joined() -> bool:
        return UserID(lou.user_id) in await alice.api.get_joined_members(lobby)

    await wait_until(joined)


NO_CONFIRMATION = {"require_email_confirmation": False}


async def approved_account(
    gatekeeper: Gatekeeper, alice: MatrixUser, room_id: RoomID, prefix: str
) -> Applicant:
    applicant = new_applicant(prefix)
    assert (await sign_up(gatekeeper, applicant))[0] == 201
    request_id = await request_id_of(gatekeeper, applicant)
    await alice.reply_to(room_id, f"!approve {request_id}", BOT)
    await wait_for_state(gatekeeper, request_id, "active")
    return applicant


async def joins(room: RoomID, applicant: Applicant, member: MatrixUser) -> None:
    """Wait until Synapse lists the account among the room's joined members."""

    async def joined() -> bool:
        return UserID(applicant.user_id) in await member.api.get_joined_members(room)

    await wait_until(joined)


async def test_with_the_shared_secret_only_newcomers_join_a_public_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    # The bot is not in it, and could not invite there (power level 0).
    lobby = await alice.api.create_room(preset=RoomCreatePreset.PUBLIC, name="Lobby")
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration={**NO_CONFIRMATION, "newcomer_rooms": [lobby]},
    )
    max_ = await approved_account(gatekeeper, alice, room_id, "max")
    await joins(lobby, max_, alice)


async def test_with_the_shared_secret_only_newcomers_join_an_invite_only_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, caplog: pytest.LogCaptureFixture
) -> None:
    # Gatekeeper's admin user is not in the room: the bot, invited there, invites them.
    lobby = await alice.api.create_room(name="Lobby", invitees=[UserID(BOT)])
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration={**NO_CONFIRMATION, "newcomer_rooms": [lobby]},
    )
    mia = await approved_account(gatekeeper, alice, room_id, "mia")
    await joins(lobby, mia, alice)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and lobby in r.message]


async def test_with_an_admin_token_an_invite_only_room_takes_newcomers_without_a_warning(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    synapse: Homeserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await synapse.server.register_user(
        f"server-admin-{secrets.token_hex(3)}", "admin password 123", admin=True
    )
    owner = MatrixUser(synapse.url, admin["user_id"], admin["access_token"])
    lobby = await owner.api.create_room(name="Lobby")  # invite-only; the bot is not asked in
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        homeserver={"admin_token": admin["access_token"]},
        registration={**NO_CONFIRMATION, "newcomer_rooms": [lobby]},
    )
    ned = await approved_account(gatekeeper, alice, room_id, "ned")
    await joins(lobby, ned, owner)
    await owner.close()
    # The bot need not be in the room: nothing says it cannot join it.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and lobby in r.message]


async def test_a_room_nobody_can_bring_newcomers_into_is_told_to_the_admins(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    # Invite-only, and neither Gatekeeper's admin user nor the bot is in it.
    lobby = await alice.api.create_room(name="Closed lobby")
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration={**NO_CONFIRMATION, "newcomer_rooms": [lobby]},
    )
    ola = await approved_account(gatekeeper, alice, room_id, "ola")

    note = await alice.wait_for(
        lambda e: (
            e["room_id"] == room_id
            and e["sender"] == BOT
            and f"{ola.user_id} could not be brought into {lobby}" in e["content"].get("body", "")
        )
    )
    assert "the bot @gatekeeper:" in note["content"]["body"]
    assert "Invite them yourself" in note["content"]["body"]
    assert UserID(ola.user_id) not in await alice.api.get_joined_members(lobby)


async def test_confirmation_mail_can_be_sent_again(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    nia = new_applicant("nia")
    await sign_up(gatekeeper, nia)
    first = await smtp.wait_for(nia.email, "confirm")
    # At most one mail every 5 minutes per address: an immediate second ask sends nothing.
    assert await gatekeeper_api(
        gatekeeper, "POST", "/api/user/re-trigger-confirmation-email", {"email": nia.email}
    ) == (200, {"sent": True})
    await pass_time(gatekeeper, 5 * 60_000)
    assert await gatekeeper_api(
        gatekeeper, "POST", "/api/user/re-trigger-confirmation-email", {"email": nia.email}
    ) == (200, {"sent": True})
    # Unknown addresses get the same answer, so nobody learns who asked for an account.
    assert await gatekeeper_api(
        gatekeeper, "POST", "/api/user/re-trigger-confirmation-email", {"email": "x@example.org"}
    ) == (200, {"sent": True})

    await wait_until(lambda: _count(smtp, nia.email, 2))
    second = smtp.to(nia.email)[1]
    assert link_token(second, "confirm-email") != link_token(first, "confirm-email")
    assert await gatekeeper_api(
        gatekeeper,
        "POST",
        "/api/user/confirm-email",
        {"token": link_token(second, "confirm-email")},
    ) == (200, {"status": "newly-confirmed"})


async def _count(smtp: MailCatcher, to: str, expected: int) -> bool:
    return len(smtp.to(to)) == expected
