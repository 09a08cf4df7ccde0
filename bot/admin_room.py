"""Finding, joining or creating the admin room, and deciding who in it is an admin."""

from __future__ import annotations

import logging

from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import EventType, RoomAlias, RoomID, UserID

from gatekeeper.appservice.config import AdminRoomConfig
from gatekeeper.appservice.storage.bot_state import ADMIN_ROOM_ID, BotState

log = logging.getLogger("gatekeeper.bot.room")

ADMIN_LEVEL = 100


class AdminRoomError(Exception):
    """The configured admin room cannot be found."""


class AdminRoom:
    def __init__(
        self, config: AdminRoomConfig, intent: IntentAPI, state: BotState, encrypted: bool
    ) -> None:
        """`encrypted`: whether a room the bot creates is end-to-end encrypted."""
        self.config = config
        self.intent = intent
        self.state = state
        self.encrypted = encrypted
        self.room_id: RoomID | None = None

    async def prepare(self) -> bool:
        """Join the configured room, or the one created earlier, or create one (→ True)."""
        if self.config.room is not None:
            self.room_id = await self._resolve(self.config.room)
        else:
            stored = await self.state.get(ADMIN_ROOM_ID)
            if stored is None:
                self.room_id = await self._create()
                return True
            self.room_id = RoomID(stored)
        await self.join()
        return False

    async def _resolve(self, room: str) -> RoomID:
        if room.startswith("!"):
            return RoomID(room)
        try:
            return (await self.intent.resolve_room_alias(RoomAlias(room))).room_id
        except MNotFound:
            raise AdminRoomError(f"admin_room.room: no room has the alias {room}") from None

    async def join(self) -> bool:
        """Join the admin room; False (and a log line saying what to do) if not invited yet."""
        assert self.room_id is not None
        try:
            await self.intent.join_room(self.room_id, max_retries=0)
        except MatrixRequestError as error:
            log.warning(
                "Cannot join the admin room %s yet (%s): invite %s to it",
                self.room_id,
                error.errcode,
                self.intent.mxid,
            )
            return False
        log.info("In the admin room %s", self.room_id)
        return True

    async def _create(self) -> RoomID:
        admins = [UserID(a) for a in self.config.admins]
        encryption = {"algorithm": "m.megolm.v1.aes-sha2"}
        room_id = await self.intent.create_room(
            name=self.config.name,
            topic="Sign-up requests for this homeserver: approve or reject them here.",
            invitees=admins,
            initial_state=(
                [{"type": str(EventType.ROOM_ENCRYPTION), "state_key": "", "content": encryption}]
                if self.encrypted
                else []
            ),
        )
        await self.state.set(ADMIN_ROOM_ID, room_id)
        # Raised after creation: since room version 12 the creator may not be listed in
        # the initial power levels, and earlier versions need it there.
        levels = await self.intent.get_power_levels(room_id, ignore_cache=True)
        for admin in admins:
            levels.users[admin] = ADMIN_LEVEL
        await self.intent.set_power_levels(room_id, levels)
        log.info(
            "Created the %sadmin room %s and invited %s",
            "encrypted " if self.encrypted else "",
            room_id,
            ", ".join(admins),
        )
        return room_id

    async def is_admin(self, user_id: UserID) -> bool:
        if user_id in self.config.admins:
            return True
        threshold = self.config.admin_power_level
        if threshold is None or self.room_id is None:
            return False
        levels = await self.intent.get_power_levels(self.room_id, ignore_cache=True)
        return levels.get_user_level(user_id) >= threshold
