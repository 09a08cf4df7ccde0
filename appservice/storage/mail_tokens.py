"""Tokens sent by mail (the `email_token` table): links to confirm an email, see a request's
status, reset a password, change the email or delete the account. Only a hash of each token
is stored."""

from __future__ import annotations

import hashlib
import secrets

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import RegistrationRequest
from gatekeeper.appservice.timeutil import now_ms

CONFIRM_PURPOSE = "confirm-email"
STATUS_PURPOSE = "status"
RESET_PURPOSE = "reset-password"
EMAIL_CHANGE_PURPOSE = "email-change"
DELETE_ACCOUNT_PURPOSE = "delete-account"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def redeem(conn: LoggingConnection | Database, token: str, purpose: str) -> str | None:
    """Mark a single-use token used: the request ID for the one caller that wins."""
    value = await conn.fetchval(
        "UPDATE email_token SET used_at=$3 WHERE token_hash=$1 AND purpose=$2"
        " AND used_at IS NULL AND expires_at > $3 RETURNING request_id",
        hash_token(token),
        purpose,
        now_ms(),
    )
    return None if value is None else str(value)


async def redeemed_for(conn: LoggingConnection, token: str, purpose: str) -> str | None:
    """The request ID of a token that was already used, if it was."""
    value = await conn.fetchval(
        "SELECT request_id FROM email_token WHERE token_hash=$1 AND purpose=$2"
        " AND used_at IS NOT NULL",
        hash_token(token),
        purpose,
    )
    return None if value is None else str(value)


class MailTokens:
    """Issue, redeem and void the tokens of a request's mail links."""

    db: Database

    def __init__(self, db: Database) -> None:
        self.db = db

    async def issue_token(
        self, conn: LoggingConnection | Database, request_id: str, purpose: str, valid_ms: int
    ) -> str:
        token = secrets.token_urlsafe(32)
        now = now_ms()
        await conn.execute(
            "INSERT INTO email_token (token_hash, request_id, purpose, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            hash_token(token),
            request_id,
            purpose,
            now,
            now + valid_ms,
        )
        return token

    async def redeem_token(self, token: str, purpose: str) -> str | None:
        """Use a single-use mail token: the request ID for the one caller that wins."""
        return await redeem(self.db, token, purpose)

    async def void_tokens(self, request_id: str, purpose: str) -> None:
        await self.db.execute(
            "UPDATE email_token SET used_at=$3 WHERE request_id=$1 AND purpose=$2"
            " AND used_at IS NULL",
            request_id,
            purpose,
            now_ms(),
        )

    async def request_for_token(
        self, token: str, purpose: str, used: bool = False
    ) -> RegistrationRequest | None:
        """The request a still-valid token belongs to, without using it; with `used`, the
        request of a single-use token that was already used (however long ago)."""
        row = await self.db.fetchrow(
            "SELECT r.* FROM email_token t JOIN registration_request r ON r.id = t.request_id"
            " WHERE t.token_hash=$1 AND t.purpose=$2 AND (t.used_at IS NOT NULL) = $3"
            " AND (t.used_at IS NOT NULL OR t.expires_at > $4)",
            hash_token(token),
            purpose,
            used,
            now_ms(),
        )
        return RegistrationRequest.from_row(row) if row else None
