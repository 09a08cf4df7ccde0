"""An end-to-end encrypted admin room, with an admin whose client is matrix-nio.

The admin's client shares no code with Gatekeeper's crypto (nio uses vodozemac, the bot
mautrix and python-olm), so every message it decrypts went through real encryption. Synapse
runs with the experimental features the bot's device model needs (harness/synapse.py).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from mautrix.types import EventType, RoomID

from gatekeeper.appservice.config import DatabaseConfig
from gatekeeper.appservice.homeserver import encryption
from gatekeeper.appservice.runtime import leadership
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.database import create_database
from harness.encrypted_user import DecryptedMessage, EncryptedUser
from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import (
    PASSWORD,
    Homeserver,
    MailCatcher,
    StartGatekeeper,
    gatekeeper_config,
    matrix_user,
    start_synapse,
    stop_or_explain,
    stop_synapse,
)
from tests.flows import BOT, can_log_in, new_applicant, request_id_of, sign_up

NO_CONFIRMATION = {"require_email_confirmation": False}
pytestmark = pytest.mark.synapse


@pytest.fixture
async def encrypted_alice(
    alice: MatrixUser, synapse: Homeserver, tmp_path: Path
) -> AsyncIterator[EncryptedUser]:
    """Alice, an admin, on a second device whose client encrypts."""
    store = tmp_path / "alice-nio"
    store.mkdir()
    user = await EncryptedUser.login(synapse.url, "alice", PASSWORD, store)
    try:
        yield user
    finally:
        await user.close()


async def encrypted_room_with_bot(
    start_gatekeeper: StartGatekeeper, admin: EncryptedUser, **sections: dict[str, Any]
) -> tuple[Gatekeeper, RoomID, list[str]]:
    """As a new operator would: Alice creates an encrypted room, Gatekeeper starts with it
    as its admin room, Alice invites the bot. Returns Gatekeeper, the room and the bot's
    devices as Alice's client sees them."""
    room_id = RoomID(await admin.create_encrypted_room([], "Encrypted admins"))
    gatekeeper = await start_gatekeeper(admin_room={"room": room_id}, **sections)
    await admin.invite(room_id, BOT)
    devices = await admin.wait_for_devices(room_id, BOT)
    return gatekeeper, room_id, devices


def from_bot_in(room_id: RoomID, containing: str) -> Callable[[DecryptedMessage], bool]:
    def match(message: DecryptedMessage) -> bool:
        return message.room_id == room_id and message.sender == BOT and containing in message.body

    return match


async def test_commands_reactions_and_notices_are_encrypted(
    start_gatekeeper: StartGatekeeper,
    encrypted_alice: EncryptedUser,
    alice: MatrixUser,
    synapse: Homeserver,
) -> None:
    gatekeeper, room_id, devices = await encrypted_room_with_bot(
        start_gatekeeper, encrypted_alice, registration=NO_CONFIRMATION
    )
    assert len(devices) == 1

    answer = await encrypted_alice.reply_to(room_id, "!pending", BOT)
    assert answer.encrypted
    assert answer.body == "No requests are waiting for a decision."

    ann = new_applicant()
    assert (await sign_up(gatekeeper, ann, reason="Alice's friend from the choir"))[0] == 201
    notice = await encrypted_alice.wait_for(from_bot_in(room_id, ann.user_id))
    assert notice.encrypted
    assert "Alice's friend from the choir" in notice.body

    await encrypted_alice.react(room_id, notice.event_id, "✅")

    await wait_until(lambda: can_log_in(synapse.url, ann), timeout=30)
    edit = await encrypted_alice.wait_for(
        lambda m: (
            m.relates_to.get("rel_type") == "m.replace"
            and m.relates_to.get("event_id") == notice.event_id
            and "created" in m.content.get("m.new_content", {}).get("body", "")
        )
    )
    assert edit.encrypted
    assert f"Approved by {encrypted_alice.user_id}" in edit.content["m.new_content"]["body"]
    assert encrypted_alice.undecryptable_in(room_id) == []
    # Alice's other client, which does not decrypt, sees only ciphertext from the bot.
    await alice.sync_once()
    sent = [
        e["type"]
        for e in alice.timeline
        if e["room_id"] == room_id and e["sender"] == BOT and "state_key" not in e
    ]
    assert len(sent) >= 4  # the answer, the notice, its edit, the hello
    assert set(sent) == {"m.room.encrypted"}


async def test_a_restart_keeps_the_device_and_the_sessions(
    start_gatekeeper: StartGatekeeper, encrypted_alice: EncryptedUser
) -> None:
    first, room_id, devices = await encrypted_room_with_bot(start_gatekeeper, encrypted_alice)
    ann = new_applicant()
    assert (await sign_up(first, ann))[0] == 201
    request_id = await request_id_of(first, ann)
    assert (await encrypted_alice.reply_to(room_id, "!pending", BOT)).encrypted
    await first.stop()

    second = await start_gatekeeper(admin_room={"room": room_id})

    shown = await encrypted_alice.reply_to(room_id, f"!show {request_id}", BOT)
    assert shown.encrypted
    assert ann.user_id in shown.body
    # The same single device: admins who verified it need not verify it again.
    encrypted_alice.client.users_for_key_query.add(BOT)
    await encrypted_alice.client.keys_query()
    assert await encrypted_alice.wait_for_devices(room_id, BOT) == devices
    assert second.bot is not None
    assert encrypted_alice.undecryptable_in(room_id) == []


async def test_without_crypto_support_the_room_and_the_log_say_so(
    start_gatekeeper: StartGatekeeper,
    encrypted_alice: EncryptedUser,
    alice: MatrixUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As if python-olm were not installed: importing mautrix's crypto fails.
    monkeypatch.setitem(sys.modules, "mautrix.crypto", None)
    room_id = RoomID(await encrypted_alice.create_encrypted_room([BOT], "Encrypted admins"))

    await start_gatekeeper(admin_room={"room": room_id})

    lines = [r.getMessage() for r in caplog.records if "encrypt" in r.getMessage().lower()]
    assert any("cannot read or write end-to-end encrypted" in line for line in lines), lines
    assert any("crypto packages are missing" in line for line in lines), lines
    # The room hears it too, in a message every client can read.
    await alice.api.join_room_by_id(room_id)
    warning = await alice.wait_for(
        lambda e: (
            e.get("room_id") == room_id
            and e.get("sender") == BOT
            and "cannot read" in e.get("content", {}).get("body", "")
        )
    )
    assert "crypto packages are missing" in warning["content"]["body"]


async def test_the_room_the_bot_creates_is_encrypted(
    start_gatekeeper: StartGatekeeper, encrypted_alice: EncryptedUser
) -> None:
    gatekeeper = await start_gatekeeper(admin_room={"encrypt_created_room": True})
    assert gatekeeper.bot is not None
    room_id = gatekeeper.bot.room.room_id
    assert room_id is not None
    await encrypted_alice.join(room_id)

    # Sent while Alice was only invited: her device got the key all the same.
    hello = await encrypted_alice.wait_for(from_bot_in(room_id, "Hello!"))
    assert hello.encrypted
    await encrypted_alice.wait_for_devices(room_id, BOT)
    answer = await encrypted_alice.reply_to(room_id, "!help", BOT)
    assert answer.encrypted
    assert answer.body.startswith("Gatekeeper commands:")


async def test_a_message_it_cannot_decrypt_gets_one_answer(
    start_gatekeeper: StartGatekeeper,
    encrypted_alice: EncryptedUser,
    alice: MatrixUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(encryption, "ROOM_KEY_WAIT_SECONDS", 1.0)
    _, room_id, _ = await encrypted_room_with_bot(start_gatekeeper, encrypted_alice)
    # Ciphertext of a session the bot never got: what a lost room key looks like.
    unreadable: Any = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": "ov1NsIGQoUO1i3xWYzYrYQa/Krm6PwcjDZkxCVyWrDc",
        "session_id": "no-such-session",
        "device_id": "NOSUCHDEVICE",
        "ciphertext": "AwgAEqACEtpcQUYV98zQ",
    }
    mark = len(encrypted_alice.messages)
    first = await alice.api.send_message_event(room_id, EventType.ROOM_ENCRYPTED, unreadable)
    answer = await encrypted_alice.wait_for(from_bot_in(room_id, "could not decrypt"), after=mark)
    assert answer.body == "I could not decrypt your message. Please send it again."
    assert answer.relates_to["m.in_reply_to"]["event_id"] == first
    assert any(f"Cannot decrypt {first}" in r.getMessage() for r in caplog.records)

    # A second one soon after is logged, not answered: the next answer is to !pending.
    second = await alice.api.send_message_event(room_id, EventType.ROOM_ENCRYPTED, unreadable)

    async def second_logged() -> bool:
        return any(f"Cannot decrypt {second}" in r.getMessage() for r in caplog.records)

    await wait_until(second_logged)
    mark = len(encrypted_alice.messages)
    pending = await encrypted_alice.reply_to(room_id, "!pending", BOT)
    assert pending.body == "No requests are waiting for a decision."
    from_bot = [m for m in encrypted_alice.messages[mark:] if m.sender == BOT]
    assert from_bot == [pending]


async def test_keys_that_cannot_be_read_give_a_fresh_device(
    start_gatekeeper: StartGatekeeper,
    encrypted_alice: EncryptedUser,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, room_id, [old_device] = await encrypted_room_with_bot(start_gatekeeper, encrypted_alice)
    assert (await encrypted_alice.reply_to(room_id, "!pending", BOT)).encrypted
    await first.stop()
    # As after restoring the database without its config: the key of the stored keys is gone.
    db = create_database(DatabaseConfig(url=db_url))
    await db.start()
    await db.execute(
        "UPDATE bot_state SET value = 'not a sealed value' WHERE key = 'crypto_pickle_key'"
    )
    await db.stop()

    await start_gatekeeper(admin_room={"room": room_id})

    assert any("encryption keys cannot be used" in r.getMessage() for r in caplog.records)
    encrypted_alice.client.users_for_key_query.add(BOT)
    await encrypted_alice.client.keys_query()
    [new_device] = await encrypted_alice.wait_for_devices(room_id, BOT)
    assert new_device != old_device  # the old one is deleted: no key goes to it any more
    answer = await encrypted_alice.reply_to(room_id, "!pending", BOT)
    assert answer.encrypted
    assert answer.body == "No requests are waiting for a decision."


# Several processes share a PostgreSQL database only.
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_process_that_takes_over_uses_the_same_device(
    start_gatekeeper: StartGatekeeper,
    encrypted_alice: EncryptedUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leadership, "HEARTBEAT_SECONDS", 0.5)
    first, room_id, devices = await encrypted_room_with_bot(start_gatekeeper, encrypted_alice)
    second = await start_gatekeeper(admin_room={"room": room_id})
    assert (first.role, second.role) == ("active", "standby")
    assert (await encrypted_alice.reply_to(room_id, "!pending", BOT)).encrypted

    await first.stop()

    async def second_is_active() -> bool:
        return second.role == "active"

    await wait_until(second_is_active)
    answer = await encrypted_alice.reply_to(room_id, "!pending", BOT)
    assert answer.encrypted
    assert answer.body == "No requests are waiting for a decision."
    encrypted_alice.client.users_for_key_query.add(BOT)
    await encrypted_alice.client.keys_query()
    assert await encrypted_alice.wait_for_devices(room_id, BOT) == devices


# A Synapse of its own (the session's has the features); the database plays no part.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_synapse_without_the_features_is_named_at_start_and_in_the_room(
    tmp_path: Path,
    db_url: str,
    smtp: MailCatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(encryption, "DELIVERY_CHECK_SECONDS", 3.0)
    homeserver = await start_synapse(tmp_path / "synapse", encryption_features=False)
    gatekeeper: Gatekeeper | None = None
    try:  # from here on, this test's own Synapse is stopped whatever fails
        gatekeeper = Gatekeeper(
            gatekeeper_config(
                homeserver,
                db_url,
                tmp_path,
                smtp.port,
                admin_room={"encrypt_created_room": True},
            )
        )
        admin = await matrix_user(homeserver, "alice")
        await gatekeeper.start()
        assert gatekeeper.bot is not None
        room_id = gatekeeper.bot.room.room_id
        assert room_id is not None
        await admin.wait_for_invite(room_id)
        await admin.api.join_room_by_id(room_id)

        warning = await admin.wait_for(
            lambda e: (
                e.get("room_id") == room_id
                and e.get("type") == "m.room.message"
                and "cannot read" in e.get("content", {}).get("body", "")
            )
        )
        assert "msc2409_to_device_messages_enabled" in warning["content"]["body"]
        lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("Synapse sent no to-device message to the bot" in line for line in lines)
    finally:
        if gatekeeper is not None:
            await stop_or_explain(gatekeeper)
        await stop_synapse(homeserver)


async def test_the_device_survives_a_rotation_of_the_config_keys(
    start_gatekeeper: StartGatekeeper, encrypted_alice: EncryptedUser
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    first, room_id, devices = await encrypted_room_with_bot(
        start_gatekeeper, encrypted_alice, security={"encryption_keys": [old]}
    )
    await first.stop()
    # The operator guide's rotation: the new key first, the old one kept for a while...
    rotating = await start_gatekeeper(
        admin_room={"room": room_id}, security={"encryption_keys": [new, old]}
    )
    await rotating.stop()
    # ...then removed.
    await start_gatekeeper(admin_room={"room": room_id}, security={"encryption_keys": [new]})

    answer = await encrypted_alice.reply_to(room_id, "!pending", BOT)
    assert answer.encrypted
    assert answer.body == "No requests are waiting for a decision."
    encrypted_alice.client.users_for_key_query.add(BOT)
    await encrypted_alice.client.keys_query()
    assert await encrypted_alice.wait_for_devices(room_id, BOT) == devices
