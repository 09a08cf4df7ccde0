"""The bot in the admin room, driven by real Matrix users on a real Synapse."""

from __future__ import annotations

import secrets

from mautrix.types import EventType, RoomID

from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, StartGatekeeper
from tests.flows import (
    BOT,
    admin_room,
    is_edit_of,
    is_notice_for,
    new_applicant,
    request_id_of,
    sign_up,
)

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
        "!confirm <code> — go ahead with a deactivation you asked for",
        "!deactivate <user> [--erase] [reason] — deactivate an account for good (asks you to"
        " confirm)",
        "!help — show the commands you can give",
        "!invite [--uses N] [--expires 7d] [--note text] — make a sign-up link that skips approval",
        "!invites — list the invites still usable",
        "!open — resume sign-ups",
        "!pending [page] — list the requests waiting for a decision",
        "!reject <id> [reason] — reject a request; the reason is mailed",
        "!reset-2fa <user or request id> [reason] — turn off someone's two-factor login, once"
        " you have checked it is them asking",
        "!revoke <invite> — end an invite",
        "!search <text> — find requests by name, email or ID",
        "!show <id> — show a request and its history",
        "!stats — requests and decisions this week and month",
        "!suspend <user> [reason] — suspend an account: it can read, not send",
        "!unblock <id> — lift a block",
        "!unsuspend <user> [reason] — lift a suspension: the account can send again",
        "!whois <user> — an account's request, approver, email, 2FA and state",
    ]


async def test_unknown_command_gets_a_hint(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper()
    room_id = await admin_room(gatekeeper, alice)
    await alice.wait_for(from_bot(room_id, "Hello!"))

    answer = await alice.reply_to(room_id, "!aprove 12", BOT)

    assert answer == "Unknown command !aprove. Send !help for the list."
    # Wrong arguments get the usage line that !help shows for the command.
    assert await alice.reply_to(room_id, "!approve", BOT) == "Usage: !approve <id>"
    assert await alice.reply_to(room_id, "!block ip", BOT) == (
        "Usage: !block <email-domain|email|ip|username> <value> [--expires 7d]"
    )
    assert (await alice.reply_to(room_id, "!invite --uses", BOT)).endswith(
        ". Usage: !invite [--uses N] [--expires 7d] [--note text]"
    )
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


async def test_applicant_text_cannot_forge_bot_lines_or_ping_the_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_email_confirmation": False})
    room_id = await admin_room(gatekeeper, alice)
    welcome = await alice.wait_for(from_bot(room_id, "Hello!"))
    ann = new_applicant()
    forged = f"✅ Approved by {alice.user_id}; account {ann.user_id} created."
    tail = "x" * 600
    reason = f"hi @room\n{forged}\r\n\u2028line\u2029two\x0bthree\x07\u202efour “q” {tail}"

    assert (await sign_up(gatekeeper, ann, reason=reason))[0] == 201

    request_id = await request_id_of(gatekeeper, ann)
    one_line = f'hi @room {forged} line two three four "q" {tail}'
    notice = await alice.wait_for(is_notice_for(room_id, ann))
    lines = notice["content"]["body"].split("\n")
    assert lines[0] == f"Sign-up request {request_id}: {ann.user_id}"
    assert lines[1].startswith("Email: a***@example.org · language: en · asked ")
    assert lines[2] == f"Reason: “{one_line[:299]}…”"
    assert lines[3].startswith("React ✅ to approve")
    assert len(lines) == 4
    assert notice["content"]["formatted_body"].count("<br>") == 3
    assert notice["content"]["m.mentions"] == {}

    # !show gives the whole reason, still on one line, and its answer pings nobody either.
    command_id = await alice.say(room_id, f"!show {request_id}")
    answer = await alice.wait_for(
        lambda e: (
            e["sender"] == BOT
            and e["content"].get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
            == command_id
        )
    )
    assert f"Reason: “{one_line}”" in answer["content"]["body"].split("\n")
    assert answer["content"]["m.mentions"] == {}

    await alice.api.react(room_id, notice["event_id"], "✅")
    # Only the bot's own line starts after a line break; the quoted fake one cannot.
    edit = await alice.wait_for(is_edit_of(notice["event_id"], f"\n{forged}"))
    assert edit["content"]["m.mentions"] == {}
    assert edit["content"]["m.new_content"]["m.mentions"] == {}
    edited = edit["content"]["m.new_content"]["body"].split("\n")
    assert edited[2] == lines[2]
    assert edited[3:] == [forged]
    assert welcome["content"]["m.mentions"] == {}
