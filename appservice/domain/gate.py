"""Who may ask for an account: invites, blocks, pausing, the daily cap, and their audit log."""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import RegistrationConfig
from gatekeeper.appservice.domain.registration_request import REQUEST_ID_ALPHABET
from gatekeeper.appservice.storage.bot_state import BotState
from gatekeeper.appservice.storage.database import Row
from gatekeeper.appservice.storage.mail_tokens import hash_token
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.gate")

BLOCK_KINDS = ("email-domain", "email", "ip", "username")
CLOSED_KEY = "signups_closed"
ID_LENGTH = 6

# How old the gate's state (closed or not, the blocks) may be in a process that did not
# change it itself. Every process reloads it on its own, at most once per interval, and
# the requests that come meanwhile share that one load: two small reads, against the
# database read per sign-up page and sign-up they save. A timed reload rather than
# LISTEN/NOTIFY: it works alike on SQLite and PostgreSQL, needs no listening connection
# in every process (only the active one listens), and no notification lost with a
# dropped connection can leave a process wrong for good. Half a second leaves the other
# half of the promised second for a busy pool to answer the reload.
STATE_REFRESH_SECONDS = 0.5
# Notes about refused sign-ups: the first one at once, then at most one per rule per
# window, saying how many more were refused (a spam wave is not a message per request).
REFUSAL_NOTE_SECONDS = 60.0

RoomNote = Callable[[str], Awaitable[None]]


def short_id() -> str:
    return "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(ID_LENGTH))


def _row(cls: Any, row: Row) -> Any:
    return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Invite:
    id: str
    created_by: str
    created_at: int
    expires_at: int | None
    uses_left: int
    uses: int
    note: str
    revoked_at: int | None


@dataclass(frozen=True)
class Block:
    id: str
    kind: str
    value: str
    created_by: str
    created_at: int
    expires_at: int | None

    def matches(self, localpart: str | None, email: str | None, address: str) -> bool:
        """Whether this block refuses the sign-up. Only what is known can match: a name
        block none without a name yet (the /registrations/ API's request until the PATCH
        names it), an email block none without a valid address."""
        value = self.value.lower()
        if self.kind == "ip":
            if self.network is None:
                return False
            try:
                return ipaddress.ip_address(address) in self.network
            except ValueError:
                return False
        if self.kind == "username":
            if localpart is None:
                return False
            if value.startswith("/") and value.endswith("/") and len(value) > 1:
                return re.search(self.value[1:-1], localpart) is not None
            return fnmatch.fnmatchcase(localpart, value)
        if email is None:
            return False
        if self.kind == "email":
            return email.lower() == value
        domain = email.rpartition("@")[2].lower()
        return domain == value or domain.endswith("." + value)

    @cached_property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """An ip block's network, parsed once: the block is asked at every sign-up."""
        try:
            return ipaddress.ip_network(self.value, strict=False)
        except ValueError:
            return None

    def in_force(self, now: int) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class Refusal:
    """Why the gate refuses a sign-up (for the admins, never for the applicant); `rule`
    names what refused it, from the admins' blocks and lists, never from what the
    applicant sent, so the notes about refusals stay few whatever a spam wave sends."""

    rule: str
    why: str


@dataclass(frozen=True)
class GateState:
    """What every sign-up and sign-up page asks: kept in memory, see STATE_REFRESH_SECONDS."""

    closed_reason: str | None
    blocks: tuple[Block, ...]


class RefusalNotes:
    """Notes into the admin room about refused sign-ups, sent outside the request: the
    first refusal by a rule at once, then every `window_seconds` one note with how many
    more that rule refused, until a window passes without any."""

    def __init__(self, room_note: RoomNote, window_seconds: float = REFUSAL_NOTE_SECONDS) -> None:
        self._room_note = room_note
        self.window_seconds = window_seconds
        # Refusals not yet told, per rule whose notes are under way.
        self._untold: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def refused(self, refusal: Refusal, first_note: str) -> None:
        if refusal.rule in self._untold:
            self._untold[refusal.rule] += 1
            return
        self._untold[refusal.rule] = 0
        task = asyncio.create_task(self._notes(refusal, first_note), name="refusal-notes")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notes(self, refusal: Refusal, first_note: str) -> None:
        await self._send(first_note)
        while True:
            await asyncio.sleep(self.window_seconds)
            untold = self._untold[refusal.rule]
            if untold == 0:
                del self._untold[refusal.rule]
                return
            self._untold[refusal.rule] = 0
            sign_ups = "sign-up" if untold == 1 else "sign-ups"
            await self._send(
                f"{untold} more {sign_ups} refused since the last note: {refusal.why}."
            )

    async def _send(self, text: str) -> None:
        try:
            await self._room_note(text)
        except Exception:
            # A note is no reason to stop noting: the next one may get through.
            log.exception("Could not write a note about refused sign-ups into the room")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


class BlockValueError(ValueError):
    """A block whose value cannot work (a bad network or regular expression)."""


def check_block_value(kind: str, value: str) -> str:
    if kind not in BLOCK_KINDS:
        raise BlockValueError(f"the kind must be one of {', '.join(BLOCK_KINDS)}")
    if kind == "ip":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise BlockValueError(f"{value} is not an IP address or network") from None
    if kind == "username" and value.startswith("/") and value.endswith("/"):
        try:
            re.compile(value[1:-1])
        except re.error as error:
            raise BlockValueError(f"the regular expression does not compile: {error}") from None
    return value.strip()


class Gate:
    """`room_note` writes a one-line note into the admin room (it drops the note when this
    process has no admin room, e.g. while standing by)."""

    def __init__(
        self, db: Database, config: RegistrationConfig, state: BotState, room_note: RoomNote
    ) -> None:
        self.db = db
        self.config = config
        self.state = state
        self._room_note = room_note
        self.refusal_notes = RefusalNotes(room_note)
        self._known: GateState | None = None
        self._known_until = 0.0  # time.monotonic()
        self._loading: asyncio.Task[GateState] | None = None
        # Counts this process's changes: a load begun before one must not be kept.
        self._changes = 0

    async def tell_room(self, text: str) -> None:
        await self._room_note(text)

    async def stop(self) -> None:
        """Drop the notes about refusals not yet told (the process is stopping)."""
        await self.refusal_notes.close()

    # --- what every sign-up asks, from memory ------------------------------------------

    async def _state(self) -> GateState:
        if self._known is not None and time.monotonic() < self._known_until:
            return self._known
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(self._changes), name="gate-state")
        # Shielded: a caller that goes away (its client hung up) leaves the load to the others.
        return await asyncio.shield(self._loading)

    async def _load(self, changes: int) -> GateState:
        started = time.monotonic()
        try:
            loaded = GateState(await self.state.get(CLOSED_KEY), tuple(await self.blocks()))
        finally:
            if changes == self._changes:
                self._loading = None
        if changes == self._changes:
            self._known, self._known_until = loaded, started + STATE_REFRESH_SECONDS
        return loaded

    def _changed(self) -> None:
        """After a change by this process: the next question reloads (it takes effect at
        once here; the other processes learn it within STATE_REFRESH_SECONDS)."""
        self._changes += 1
        self._known = self._loading = None

    # --- audit -------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, detail: str = "") -> None:
        await self.db.execute(
            "INSERT INTO admin_audit (at, actor, action, detail) VALUES ($1, $2, $3, $4)",
            now_ms(),
            actor,
            action,
            detail,
        )

    async def recent_audit(self, limit: int) -> list[tuple[int, str, str]]:
        """The latest admin actions and request decisions: (time, actor, what)."""
        rows = await self.db.fetch(
            "SELECT at, actor, action || ' ' || detail AS what FROM admin_audit"
            " UNION ALL SELECT at, actor, request_id || ': ' || COALESCE(from_state, 'new')"
            " || ' → ' || to_state || COALESCE(' (' || reason || ')', '') AS what"
            " FROM registration_audit WHERE actor NOT IN ('applicant', 'gatekeeper')"
            " ORDER BY at DESC LIMIT $1",
            limit,
        )
        return [(int(r["at"]), str(r["actor"]), str(r["what"]).strip()) for r in rows]

    # --- pausing -----------------------------------------------------------------------

    async def closed_reason(self) -> str | None:
        return (await self._state()).closed_reason

    async def close(self, actor: str, reason: str) -> None:
        await self.state.set(CLOSED_KEY, reason)
        self._changed()
        await self.audit(actor, "close", reason)

    async def open(self, actor: str) -> None:
        await self.db.execute("DELETE FROM bot_state WHERE key=$1", CLOSED_KEY)
        self._changed()
        await self.audit(actor, "open")

    async def apply_daily_cap(self) -> None:
        """Close sign-ups by themselves once today's count reaches the cap."""
        cap = self.config.daily_cap
        if cap is None or await self.closed_reason() is not None:
            return
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        today = await self.db.fetchval(
            "SELECT COUNT(*) FROM registration_request WHERE created_at >= $1",
            int(midnight.timestamp() * 1000),
        )
        if int(today) >= cap:
            reason = f"the daily cap of {cap} sign-ups is reached"
            await self.close("gatekeeper", reason)
            await self.tell_room(f"Sign-ups are now closed: {reason}. Send !open to reopen.")

    # --- blocks ------------------------------------------------------------------------

    async def add_block(self, kind: str, value: str, actor: str, expires_at: int | None) -> Block:
        block = Block(short_id(), kind, check_block_value(kind, value), actor, now_ms(), expires_at)
        await self.db.execute(
            "INSERT INTO signup_block (id, kind, value, created_by, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            block.id,
            block.kind,
            block.value,
            block.created_by,
            block.created_at,
            block.expires_at,
        )
        self._changed()
        await self.audit(actor, "block", f"{block.id} {kind} {block.value}")
        return block

    async def blocks(self) -> list[Block]:
        """The blocks in force, from the database (the admins' list is never stale)."""
        rows = await self.db.fetch(
            "SELECT * FROM signup_block WHERE removed_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > $1) ORDER BY created_at",
            now_ms(),
        )
        return [_row(Block, row) for row in rows]

    async def remove_block(self, block_id: str, actor: str) -> bool:
        removed = await self.db.fetchval(
            "UPDATE signup_block SET removed_at=$2 WHERE id=$1 AND removed_at IS NULL RETURNING id",
            block_id.strip().lower(),
            now_ms(),
        )
        self._changed()
        if removed is not None:
            await self.audit(actor, "unblock", block_id)
        return removed is not None

    async def refusal(
        self, localpart: str | None, email: str | None, address: str
    ) -> Refusal | None:
        """What refuses this sign-up, from memory, or None. `localpart` and `email` are None
        while not known (or not valid): only the rules about what is known apply."""
        if email is not None:
            domain = email.rpartition("@")[2].lower()
            allowed = [d.lower() for d in self.config.allowed_email_domains]
            if allowed and domain not in allowed:
                return Refusal("allow-list", f"email domain {domain} is not on the allow-list")
            denied = next(
                (d for d in self.config.denied_email_domains if d.lower() == domain), None
            )
            if denied is not None:
                return Refusal(f"deny-list {denied}", f"email domain {domain} is on the deny-list")
        now = now_ms()
        for block in (await self._state()).blocks:
            # The state may be up to STATE_REFRESH_SECONDS old: a block ends on time anyway.
            if block.in_force(now) and block.matches(localpart, email, address):
                return Refusal(
                    f"block {block.id}", f"block {block.id} ({block.kind} {block.value})"
                )
        return None

    # --- invites -----------------------------------------------------------------------

    async def create_invite(
        self, actor: str, uses: int, expires_at: int | None, note: str
    ) -> tuple[Invite, str]:
        token = secrets.token_urlsafe(24)  # 192 bits
        invite = Invite(short_id(), actor, now_ms(), expires_at, uses, 0, note, None)
        await self.db.execute(
            "INSERT INTO invite (id, token_hash, created_by, created_at, expires_at, uses_left,"
            " note) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            invite.id,
            hash_token(token),
            actor,
            invite.created_at,
            expires_at,
            uses,
            note,
        )
        await self.audit(actor, "invite", f"{invite.id} uses={uses} {note}".strip())
        return invite, token

    async def invites(self) -> list[Invite]:
        rows = await self.db.fetch(
            "SELECT * FROM invite WHERE revoked_at IS NULL AND uses_left > 0"
            " AND (expires_at IS NULL OR expires_at > $1) ORDER BY created_at",
            now_ms(),
        )
        return [_row(Invite, row) for row in rows]

    async def revoke(self, invite_id: str, actor: str) -> bool:
        revoked = await self.db.fetchval(
            "UPDATE invite SET revoked_at=$2 WHERE id=$1 AND revoked_at IS NULL RETURNING id",
            invite_id.strip().lower(),
            now_ms(),
        )
        if revoked is not None:
            await self.audit(actor, "revoke", invite_id)
        return revoked is not None

    async def valid_invite(self, token: str) -> Invite | None:
        row = await self.db.fetchrow(
            "SELECT * FROM invite WHERE token_hash=$1 AND revoked_at IS NULL AND uses_left > 0"
            " AND (expires_at IS NULL OR expires_at > $2)",
            hash_token(token),
            now_ms(),
        )
        return _row(Invite, row) if row else None

    @staticmethod
    async def claim_invite(conn: LoggingConnection, invite_id: str) -> bool:
        """Use one of the invite's uses, atomically (inside the sign-up's transaction)."""
        claimed = await conn.fetchval(
            "UPDATE invite SET uses_left=uses_left-1, uses=uses+1 WHERE id=$1 AND uses_left > 0"
            " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) RETURNING id",
            invite_id,
            now_ms(),
        )
        return claimed is not None
