"""New accounts: made with the admin API when a token is set, and brought into rooms."""

from __future__ import annotations

import secrets

import aiohttp
from mautrix.errors import MNotFound
from mautrix.types import EventType, Membership, RoomCreatePreset, UserID

from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
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


async def test_without_admin_token_the_bot_invites_newcomers(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, synapse: Homeserver
) -> None:
    lobby = await alice.api.create_room(name="Lobby", invitees=[UserID(BOT)])
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper,
        alice,
        registration={"require_email_confirmation": False, "newcomer_rooms": [lobby]},
    )
    max_ = new_applicant("max")
    await sign_up(gatekeeper, max_)
    request_id = await request_id_of(gatekeeper, max_)

    await alice.reply_to(room_id, f"!approve {request_id}", BOT)

    await wait_for_state(gatekeeper, request_id, "active")

    async def invited() -> bool:
        try:
            member = await alice.api.get_state_event(lobby, EventType.ROOM_MEMBER, max_.user_id)
        except MNotFound:
            return False
        return member.membership == Membership.INVITE

    await wait_until(invited)


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
