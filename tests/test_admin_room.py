"""The bot in the admin room, driven by real Matrix users on a real Synapse."""

from __future__ import annotations

import secrets

from mautrix.types import EventType, RoomID

from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, StartGatekeeper
from tests.flows import BOT, admin_room

REFUSAL = "Sorry, only Gatekeeper admins can give me commands."


def from_bot(room_id: RoomID, text: str) -> object:
    return lambda e: (
        e["room_id"] == room_id
        and e["sender"] == BOT
        and e["type"] == "m.room.message"
        and text in e["content"].get("body", "")
    )


async def bot_joined(user: MatrixUser, room_id: RoomID) -> bool:
    return BOT in await user.api.get_joined_members(room_id)


async def test_creates_room_invites_admins_and_answers_help(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    room_id = await admin_room(gatekeeper, alice)
    name = await alice.api.get_state_event(room_id, EventType.ROOM_NAME)
    assert name.name == "Gatekeeper admins"
    levels = await alice.api.get_state_event(room_id, EventType.ROOM_POWER_LEVELS)
    assert levels.get_user_level(alice.user_id) == 100
    welcome = await alice.wait_for(from_bot(room_id, "Hello!"))
    assert welcome["content"]["msgtype"] == "m.notice"
    assert await alice.api.get_displayname(BOT) == "Gatekeeper"

    answer = await alice.reply_to(room_id, "!help", BOT)

    assert answer.splitlines() == [
        "Gatekeeper commands:",
        "!approve <id> — approve a request: its account is created",
        "!audit [n] — the latest decisions and admin actions",
        "!block <email-domain|email|ip|username> <value> [--expires 7d] — refuse matching"
        " sign-ups (username: a glob or /regex/)",
        "!blocks — list the blocks in force",
        "!close [reason] — pause new sign-ups (invites still work)",
        "!help — show the commands you can give",
        "!invite [--uses N] [--expires 7d] [--note text] — make a sign-up link that skips approval",
        "!invites — list the invites still usable",
        "!open — resume sign-ups",
        "!pending [page] — list the requests waiting for a decision",
        "!reject <id> [reason] — reject a request; the reason is mailed",
        "!revoke <invite> — end an invite",
        "!search <text> — find requests by name, email or ID",
        "!show <id> — show a request and its history",
        "!stats — requests and decisions this week and month",
        "!unblock <id> — lift a block",
    ]


async def test_unknown_command_gets_a_hint(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    room_id = await admin_room(gatekeeper, alice)
    await alice.wait_for(from_bot(room_id, "Hello!"))

    answer = await alice.reply_to(room_id, "!aprove 12", BOT)

    assert answer == "Unknown command !aprove. Send !help for the list."
    # Plain chat is not a command and gets no answer: the next answer is to !help.
    await alice.say(room_id, "morning all")
    assert (await alice.reply_to(room_id, "!help", BOT)).startswith("Gatekeeper commands:")


async def test_non_admin_is_refused(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, mallory: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    room_id = await admin_room(gatekeeper, alice)
    await alice.api.invite_user(room_id, mallory.user_id)
    await mallory.wait_for_invite(room_id)
    await mallory.api.join_room_by_id(room_id)

    assert await mallory.reply_to(room_id, "!help", BOT) == REFUSAL
    assert await mallory.reply_to(room_id, "!whatever", BOT) == REFUSAL


async def test_restart_keeps_the_created_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    first = await start_gatekeeper()
    room_id = await admin_room(first, alice)
    await first.stop()

    second = await start_gatekeeper()

    assert second.bot.room.room_id == room_id
    assert (await alice.reply_to(room_id, "!help", BOT)).startswith("Gatekeeper commands:")
    welcomes = [e for e in alice.timeline if from_bot(room_id, "Hello!")(e)]
    assert len(welcomes) <= 1  # the first start's, if not yet read; never a second one


async def test_configured_alias_joined_once_invited(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, synapse: Homeserver
) -> None:
    localpart = f"admins-{secrets.token_hex(4)}"
    room_id = await alice.api.create_room(alias_localpart=localpart, name="Our admins")
    alias = f"#{localpart}:gatekeeper.test"

    # Not invited yet: Gatekeeper starts anyway and joins when the invite comes.
    gatekeeper = await start_gatekeeper(admin_room={"room": alias})
    assert gatekeeper.bot.room.room_id == room_id
    await alice.api.invite_user(room_id, BOT)
    await wait_until(lambda: bot_joined(alice, room_id))

    answer = await alice.reply_to(room_id, "!help", BOT)
    assert answer.startswith("Gatekeeper commands:")


async def test_power_level_makes_an_admin(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    bob: MatrixUser,
    mallory: MatrixUser,
) -> None:
    room_id = await alice.api.create_room(
        invitees=[bob.user_id, mallory.user_id, BOT],
        power_level_override={"users": {bob.user_id: 50}},
    )
    await start_gatekeeper(admin_room={"room": room_id, "admin_power_level": 50})
    assert await bot_joined(alice, room_id)
    for user in (bob, mallory):
        await user.wait_for_invite(room_id)
        await user.api.join_room_by_id(room_id)

    assert (await bob.reply_to(room_id, "!help", BOT)).startswith("Gatekeeper commands:")
    assert await mallory.reply_to(room_id, "!help", BOT) == REFUSAL
