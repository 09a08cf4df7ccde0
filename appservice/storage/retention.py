"""Personal data kept no longer than needed (docs/privacy.md lists what is kept where).

Erasing is not a state change: a closed request keeps its state, dates and deciders (a
tombstone for `!stats` and `!audit`) and loses what tells who asked. Its `email` becomes
its own ID, which marks it as erased, keeps the unique index of a deactivated account's
address apart, and can never equal an address (it has no @).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import RetentionConfig
from gatekeeper.appservice.domain.registration_request import (
    COLUMNS,
    RegistrationRequest,
    State,
)
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.retention")

DAY_MS = 86_400_000
BATCH = 100

# Requests that hold nothing anyone still needs once their time is up.
_CLOSED = " OR ".join(
    f"(status='{COLUMNS[state][0]}' AND matrix_status='{COLUMNS[state][1]}')"
    for state in (State.REJECTED, State.WITHDRAWN, State.EXPIRED, State.DEACTIVATED)
)
_DEACTIVATED_STATUS = COLUMNS[State.DEACTIVATED][1]
# Rows that belong to a request and are of no use once it is closed.
_OWNED_TABLES = (
    "email_token",
    "web_session",
    "remembered_device",
    "totp",
    "second_factor_ticket",
    "recovery_code",
)


@dataclass(frozen=True)
class Erased:
    """What one sweep erased."""

    requests: int = 0
    rate_limits: int = 0
    mails: int = 0
    blocks: int = 0


def _placeholders(values: Sequence[str], first: int = 1) -> str:
    return ", ".join(f"${n}" for n in range(first, first + len(values)))


def is_erased(request: RegistrationRequest) -> bool:
    return request.email == request.id


async def erase_withdrawn(conn: LoggingConnection, request: RegistrationRequest) -> None:
    """A withdrawn request's personal data goes at once, not after the retention."""
    await erase_requests(conn, [request.id], keep_links=True)


async def erase_requests(
    conn: LoggingConnection | Database, ids: Sequence[str], keep_links: bool = False
) -> None:
    """Erase the personal data of these requests (closed ones: this never closes them).
    `keep_links` keeps their mail links' rows (a hash, a purpose, dates), so that a link
    still says what became of the request; the sweep deletes them later."""
    if not ids:
        return
    where = f"IN ({_placeholders(ids)})"
    emails = [
        row["email"]
        for row in await conn.fetch(
            f"SELECT email FROM registration_request WHERE id {where} AND email <> id",  # noqa: S608
            *ids,
        )
    ]
    if emails:
        # Sent or not, a mail to the address names it.
        lowered = [email.lower() for email in emails]
        await conn.execute(
            f"DELETE FROM mail_outbox WHERE LOWER(recipient) IN ({_placeholders(lowered)})",  # noqa: S608
            *lowered,
        )
    for table in _OWNED_TABLES:
        if keep_links and table == "email_token":
            continue
        await conn.execute(f"DELETE FROM {table} WHERE request_id {where}", *ids)  # noqa: S608
    await conn.execute(
        f"UPDATE registration_audit SET reason = NULL WHERE request_id {where}",  # noqa: S608
        *ids,
    )
    await conn.execute(
        f"UPDATE two_factor_reset SET reason = NULL WHERE request_id {where}",  # noqa: S608
        *ids,
    )
    await conn.execute(
        "UPDATE account_moderation SET reason = NULL, error = NULL"  # noqa: S608
        f" WHERE request_id {where}",
        *ids,
    )
    # A deactivated account keeps its name: the homeserver never gives it to anyone else,
    # and the moderation history is kept under it.
    await conn.execute(
        "UPDATE registration_request SET email = id,"  # noqa: S608
        f" localpart = CASE WHEN matrix_status = '{_DEACTIVATED_STATUS}' THEN localpart"
        " ELSE '' END,"
        " language = '', reason = '', password_hash = '', password_encrypted = NULL,"
        " decision_reason = NULL, last_error = NULL, pending_email = NULL"
        f" WHERE id {where}",
        *ids,
    )


class Retention:
    def __init__(self, db: Database, config: RetentionConfig) -> None:
        self.db = db
        self.config = config

    async def sweep(self, now: int | None = None) -> Erased:
        """Erase what is older than its retention; idempotent, in batches."""
        now = now_ms() if now is None else now
        closed_cutoff = now - int(self.config.closed_requests_days * DAY_MS)
        return Erased(
            requests=await self._closed_requests(closed_cutoff),
            rate_limits=await self._rate_limits(
                now, now - int(self.config.ip_addresses_days * DAY_MS)
            ),
            mails=await self._sent_mail(now - int(self.config.sent_mail_days * DAY_MS)),
            blocks=await self._ended_blocks(closed_cutoff),
        )

    async def _closed_requests(self, cutoff: int) -> int:
        erased = 0
        while True:
            async with transaction(self.db) as conn:
                rows = await conn.fetch(
                    f"SELECT id FROM registration_request WHERE ({_CLOSED})"  # noqa: S608
                    " AND updated_at < $1 AND (email <> id OR id IN"
                    " (SELECT request_id FROM email_token)) ORDER BY updated_at LIMIT $2",
                    cutoff,
                    BATCH,
                )
                await erase_requests(conn, [row["id"] for row in rows])
            erased += len(rows)
            if len(rows) < BATCH:
                return erased

    async def _rate_limits(self, now: int, cutoff: int) -> int:
        # Their keys hold client addresses and the names tried at login; a lock still in
        # force stays.
        deleted = await self.db.fetch(
            "DELETE FROM rate_limit WHERE window_start < $1 AND locked_until <= $2 RETURNING key",
            cutoff,
            now,
        )
        return len(deleted)

    async def _sent_mail(self, cutoff: int) -> int:
        deleted = await self.db.fetch(
            "DELETE FROM mail_outbox WHERE sent_at IS NOT NULL AND sent_at < $1 RETURNING id",
            cutoff,
        )
        return len(deleted)

    async def _ended_blocks(self, cutoff: int) -> int:
        """A block removed or expired that long ago forgets what it matched (an address,
        a network, a name), also in the admin audit's line that set it."""
        rows = await self.db.fetch(
            "SELECT id, kind, value FROM signup_block WHERE value <> ''"
            " AND (removed_at < $1 OR expires_at < $1)",
            cutoff,
        )
        for row in rows:
            async with transaction(self.db) as conn:
                await conn.execute("UPDATE signup_block SET value = '' WHERE id = $1", row["id"])
                await conn.execute(
                    "UPDATE admin_audit SET detail = $1 WHERE action = 'block' AND detail = $2",
                    f"{row['id']} {row['kind']}",
                    f"{row['id']} {row['kind']} {row['value']}",
                )
        return len(rows)
