"""An admin with an end-to-end encrypted client of its own: matrix-nio with vodozemac.

It shares no code with Gatekeeper's crypto (mautrix and python-olm), so what it decrypts
is what an admin's Element would show. Like Element it encrypts its reactions, with the
relation left in the clear part of the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    EnableEncryptionBuilder,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageNotice,
    RoomMessageText,
    RoomSendResponse,
)

from harness.matrix_user import EVENT_WAIT_SECONDS, EVENT_WAITS

# nio warns about each event it cannot decrypt, such as history from before it joined.
logging.getLogger("nio").setLevel(logging.ERROR)


class EncryptedUserError(Exception):
    """The encrypted client could not log in, send, or decrypt what it waited for."""


class DecryptedMessage:
    """A message as the admin's client shows it, after decryption."""

    def __init__(self, event: RoomMessageText | RoomMessageNotice, room_id: str) -> None:
        self.event_id: str = event.event_id
        self.sender: str = event.sender
        self.room_id = room_id
        self.content: dict[str, Any] = event.source.get("content", {})
        self.encrypted: bool = bool(event.decrypted)

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))

    @property
    def relates_to(self) -> dict[str, Any]:
        return dict(self.content.get("m.relates_to") or {})

    def __repr__(self) -> str:
        return f"<{self.event_id} from {self.sender}: {self.content}>"


class EncryptedUser:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.user_id: str = client.user_id
        self.messages: list[DecryptedMessage] = []
        # (room ID, event ID) of what it could not decrypt, such as other rooms' history.
        self.undecryptable: list[tuple[str, str]] = []
        self._arrived = asyncio.Event()
        self._sync: asyncio.Task[Any] | None = None

    @classmethod
    async def login(
        cls, homeserver: str, localpart: str, password: str, store: Path
    ) -> EncryptedUser:
        """Log in with a new device whose keys live in the existing folder `store`."""
        client = AsyncClient(
            homeserver,
            localpart,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        response = await client.login(password, device_name="test admin (nio)")
        if not isinstance(response, LoginResponse):
            await client.close()
            raise EncryptedUserError(f"login failed: {response}")
        if client.should_upload_keys:
            await client.keys_upload()
        user = cls(client)
        client.add_event_callback(user._on_event, (RoomMessageText, RoomMessageNotice, MegolmEvent))
        await client.sync(timeout=0, full_state=True)
        user._sync = asyncio.create_task(client.sync_forever(timeout=500), name="nio-sync")
        return user

    async def close(self) -> None:
        """Stop syncing and log out, which deletes the device. Left behind, devices pile up
        on the account, and each message's room key goes to all of them: past 20, nio sends
        it in parallel requests, and Synapse can then lose the one to the bot's device
        (docs/operator-guide.md, "Encrypted admin rooms")."""
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync
        try:
            await self.client.logout()
        finally:
            await self.client.close()

    async def _on_event(self, room: Any, event: Any) -> None:
        if isinstance(event, MegolmEvent):
            self.undecryptable.append((room.room_id, event.event_id))
        else:
            self.messages.append(DecryptedMessage(event, room.room_id))
        self._arrived.set()

    def undecryptable_in(self, room_id: str) -> list[str]:
        return [event_id for room, event_id in self.undecryptable if room == room_id]

    async def create_encrypted_room(self, invite: list[str], name: str) -> str:
        response = await self.client.room_create(
            name=name, invite=invite, initial_state=[EnableEncryptionBuilder().as_dict()]
        )
        if not isinstance(response, RoomCreateResponse):
            raise EncryptedUserError(f"room creation failed: {response}")
        return str(response.room_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        response = await self.client.room_invite(room_id, user_id)
        if not isinstance(response, RoomInviteResponse):
            raise EncryptedUserError(f"inviting {user_id} failed: {response}")

    async def join(self, room_id: str) -> None:
        response = await self.client.join(room_id)
        if not isinstance(response, JoinResponse):
            raise EncryptedUserError(f"joining {room_id} failed: {response}")

    async def wait_for_devices(
        self, room_id: str, user_id: str, timeout: float = EVENT_WAIT_SECONDS
    ) -> list[str]:
        """The devices of `user_id` once it has joined `room_id` and its keys are known, so
        that the next message's key is shared with them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            room = self.client.rooms.get(room_id)
            joined = (
                room is not None and user_id in room.users and user_id not in room.invited_users
            )
            if joined:
                if self.client.should_query_keys:
                    await self.client.keys_query()
                devices = self.client.device_store.active_user_devices(user_id)
                found = sorted(device.id for device in devices)
                if found:
                    return found
            await asyncio.sleep(0.2)
        raise EncryptedUserError(f"{user_id} has no known device in {room_id} after {timeout} s")

    async def say(self, room_id: str, text: str) -> str:
        response = await self.client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": text},
            # The bot's device is not verified: nio refuses to send otherwise.
            ignore_unverified_devices=True,
        )
        if not isinstance(response, RoomSendResponse):
            raise EncryptedUserError(f"sending failed: {response}")
        return str(response.event_id)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """An encrypted reaction, as Element sends it: nio's room_send leaves reactions
        unencrypted, so this encrypts by hand and keeps the relation in the clear."""
        client = self.client
        if client.olm is None:
            raise EncryptedUserError("the client has no encryption")
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        _, encrypted = client.encrypt(room_id, "m.reaction", {})
        encrypted["m.relates_to"] = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
        method, path, data = Api.room_send(
            client.access_token, room_id, "m.room.encrypted", encrypted, str(uuid.uuid4())
        )
        response = await client._send(RoomSendResponse, method, path, data, (room_id,))
        if not isinstance(response, RoomSendResponse):
            raise EncryptedUserError(f"reacting failed: {response}")
        return str(response.event_id)

    async def wait_for(
        self,
        match: Callable[[DecryptedMessage], bool],
        timeout: float = EVENT_WAIT_SECONDS,
        after: int = 0,
    ) -> DecryptedMessage:
        """The first decrypted message from index `after` on that `match` accepts."""
        started = time.monotonic()
        seen = after
        while True:
            for message in self.messages[seen:]:
                if match(message):
                    EVENT_WAITS.append(time.monotonic() - started)
                    return message
            seen = len(self.messages)
            if self._sync is not None and self._sync.done():
                raise EncryptedUserError(f"the client stopped syncing: {self._sync.exception()!r}")
            left = started + timeout - time.monotonic()
            if left <= 0:
                raise EncryptedUserError(
                    f"no matching decrypted message for {self.user_id} in {timeout} s; "
                    f"the last ones: {self.messages[-3:]}; undecryptable: {self.undecryptable}"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def reply_to(self, room_id: str, text: str, bot: str) -> DecryptedMessage:
        """Say `text` and return the bot's decrypted answer to it."""
        mark = len(self.messages)
        event_id = await self.say(room_id, text)
        return await self.wait_for(
            lambda m: (
                m.sender == bot
                and m.relates_to.get("m.in_reply_to", {}).get("event_id") == event_id
            ),
            after=mark,
        )
