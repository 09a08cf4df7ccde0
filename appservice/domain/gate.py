"""Who may ask for an account: invites, blocks, pausing, the daily cap, and their audit log."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import RegistrationConfig
from gatekeeper.appservice.domain.registration_request import REQUEST_ID_ALPHABET
from gatekeeper.appservice.storage.bot_state import BotState
from gatekeeper.appservice.storage.database import Row
from gatekeeper.appservice.storage.mail_tokens import hash_token
from gatekeeper.appservice.timeutil import now_ms

BLOCK_KINDS = ("email-domain", "email", "ip", "username")
CLOSED_KEY = "signups_closed"
ID_LENGTH = 6

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

    def matches(self, localpart: str | None, email: str, address: str) -> bool:
        """Whether this block refuses the sign-up; a name block, none without a name yet
        (the /registrations/ API's request until the PATCH names it)."""
        value = self.value.lower()
        if self.kind == "email":
            return email.lower() == value
        if self.kind == "email-domain":
            domain = email.rpartition("@")[2].lower()
            return domain == value or domain.endswith("." + value)
        if self.kind == "ip":
            try:
                return ipaddress.ip_address(address) in ipaddress.ip_network(value, strict=False)
            except ValueError:
                return False
        if localpart is None:
            return False
        if value.startswith("/") and value.endswith("/") and len(value) > 1:
            return re.search(self.value[1:-1], localpart) is not None
        return fnmatch.fnmatchcase(localpart, value)


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

    async def tell_room(self, text: str) -> None:
        await self._room_note(text)

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
        return await self.state.get(CLOSED_KEY)

    async def close(self, actor: str, reason: str) -> None:
        await self.state.set(CLOSED_KEY, reason)
        await self.audit(actor, "close", reason)

    async def open(self, actor: str) -> None:
        await self.db.execute("DELETE FROM bot_state WHERE key=$1", CLOSED_KEY)
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
        await self.audit(actor, "block", f"{block.id} {kind} {block.value}")
        return block

    async def blocks(self) -> list[Block]:
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
        if removed is not None:
            await self.audit(actor, "unblock", block_id)
        return removed is not None

    async def blocked_by(self, localpart: str | None, email: str, address: str) -> str | None:
        """Why this sign-up is refused (for the admins, never for the applicant), or None."""
        domain = email.rpartition("@")[2].lower()
        allowed = [d.lower() for d in self.config.allowed_email_domains]
        if allowed and domain not in allowed:
            return f"email domain {domain} is not on the allow-list"
        if domain in (d.lower() for d in self.config.denied_email_domains):
            return f"email domain {domain} is on the deny-list"
        for block in await self.blocks():
            if block.matches(localpart, email, address):
                return f"block {block.id} ({block.kind} {block.value})"
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
