"""A real Matrix user driving the client-server API, as an admin's client would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from mautrix.api import Method, Path
from mautrix.client import ClientAPI
from mautrix.types import (
    FilterID,
    MatrixUserIdentifier,
    RoomID,
    SyncToken,
    UserID,
    UserIdentifier,
)

Event = dict[str, Any]


# Events one /sync may carry per room; a busier room's gap is filled from /messages.
SYNC_TIMELINE_LIMIT = 100
# An inline filter: the sync API takes one where a filter ID goes.
SYNC_FILTER = FilterID(json.dumps({"room": {"timeline": {"limit": SYNC_TIMELINE_LIMIT}}}))

# How long a test waits for the bot. The median wait is 0.05 s and the longest seen in a
# quiet full run 2.3 s (the summary line prints it). But with one core kept busy by a CPU
# hog, Synapse twice delivered no appservice transaction at all for more than 15 s, each
# time just after a new Gatekeeper had started and been pinged (its log shows no push and
# no error in that time), so a 15 s limit failed one wait in about 220 per hog run. 45 s
# is what passed every hog run; a limited /sync no longer hides events (see sync_once).
EVENT_WAIT_SECONDS = 45.0
# How long each successful wait_for took: the suite reports the longest, so a wait that
# creeps towards the limit shows before it fails.
EVENT_WAITS: list[float] = []


class MatrixUser:
    """Logged-in user with a /sync cursor, so each wait sees only what arrived since."""

    def __init__(self, homeserver: str, user_id: str, access_token: str) -> None:
        self.user_id = UserID(user_id)
        self.api = ClientAPI(self.user_id, base_url=homeserver, token=access_token)
        self._since: SyncToken | None = None
        self.invites: set[RoomID] = set()
        self.timeline: list[Event] = []

    @classmethod
    async def login(cls, homeserver: str, localpart: str, password: str) -> MatrixUser:
        api = ClientAPI(base_url=homeserver)
        response = await api.login(
            identifier=UserIdentifier(MatrixUserIdentifier(localpart)), password=password
        )
        await api.api.session.close()
        return cls(homeserver, response.user_id, response.access_token)

    async def close(self) -> None:
        await self.api.api.session.close()

    async def sync_once(self, timeout_ms: int = 500) -> None:
        since = self._since
        data = await self.api.sync(since=since, timeout=timeout_ms, filter_id=SYNC_FILTER)
        self._since = data["next_batch"]
        rooms = data.get("rooms", {})
        self.invites.update(RoomID(r) for r in rooms.get("invite", {}))
        for room_id, room in rooms.get("join", {}).items():
            timeline = room.get("timeline", {})
            events = timeline.get("events", [])
            if timeline.get("limited") and since is not None:
                # More arrived than one sync carries: a real client would show the gap;
                # a test must see every event, so read it back from the room's history.
                gap = await self._events_between(room_id, since, timeline["prev_batch"])
                events = [*gap, *events]
            for event in events:
                self.timeline.append({**event, "room_id": room_id})

    async def _events_between(self, room_id: str, since: str, until: str) -> list[Event]:
        """The room's events after `since` and before `until`, oldest first."""
        newest_first: list[Event] = []
        token: str | None = until
        while token is not None:
            page = await self.api.api.request(
                Method.GET,
                Path.v3.rooms[room_id].messages,
                query_params={"dir": "b", "from": token, "to": since, "limit": "100"},
            )
            newest_first.extend(page.get("chunk", []))
            token = page.get("end") if page.get("chunk") else None
        return newest_first[::-1]

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = EVENT_WAIT_SECONDS
    ) -> Event:
        """The first event, old or new, matching `predicate`; consumed so it is not seen twice."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            for index, event in enumerate(self.timeline):
                if predicate(event):
                    del self.timeline[index]
                    EVENT_WAITS.append(time.monotonic() - started)
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching event for {self.user_id} in {timeout} s")
            await self.sync_once()

    async def wait_for_invite(self, room_id: RoomID, timeout: float = EVENT_WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while room_id not in self.invites:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user_id} got no invite to {room_id} in {timeout} s")
            await self.sync_once()
        self.invites.discard(room_id)

    async def say(self, room_id: RoomID, text: str) -> str:
        return str(await self.api.send_text(room_id, text))

    async def reply_to(
        self, room_id: RoomID, text: str, sender: str, timeout: float = EVENT_WAIT_SECONDS
    ) -> str:
        """Send `text` and return the body of `sender`'s reply to it."""
        event_id = await self.say(room_id, text)

        def is_reply(event: Event) -> bool:
            relation = event["content"].get("m.relates_to", {})
            return bool(
                event["sender"] == sender
                and relation.get("m.in_reply_to", {}).get("event_id") == event_id
            )

        return str((await self.wait_for(is_reply, timeout))["content"]["body"])


async def wait_until(check: Callable[[], Any], timeout: float = EVENT_WAIT_SECONDS) -> Any:
    """Poll an async `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.2)
