"""Rows written straight into Gatekeeper's database, for scenarios that need many requests
to exist without paying a sign-up (and an argon2 hash) for each."""

from __future__ import annotations

import secrets

from mautrix.util.async_db import Database

from gatekeeper.appservice.storage.mail_tokens import STATUS_PURPOSE, hash_token
from gatekeeper.appservice.timeutil import now_ms

DAY_MS = 86_400_000


async def pending_requests(
    db: Database, prefix: str, count: int, password_hash: str
) -> list[tuple[str, str]]:
    """`count` confirmed, pending requests whose notices are already posted (so the bot
    leaves them alone); returns their (id, email)."""
    now = now_ms()
    rows = [
        (
            f"{prefix}{index:06d}",
            f"{prefix}-{index}",
            f"{prefix}-{index}@example.org",
            password_hash,
            now - index * 1000,
            f"$seeded-{prefix}-{index}",
        )
        for index in range(count)
    ]
    await db.executemany(
        "INSERT INTO registration_request (id, localpart, email, language, password_hash,"
        " status, matrix_status, email_verified, created_at, updated_at, next_attempt_at,"
        " notice_event_id, notice_state)"
        " VALUES ($1, $2, $3, 'en', $4, 'pending', 'pending', TRUE, $5, $5, $5, $6, 'pending')",
        rows,
    )
    return [(row[0], row[2]) for row in rows]


async def status_tokens(db: Database, request_ids: list[str]) -> list[str]:
    """A fresh status-page token (as the confirmation mail carries) for each request."""
    tokens = [secrets.token_urlsafe(32) for _ in request_ids]
    now = now_ms()
    await db.executemany(
        "INSERT INTO email_token (token_hash, request_id, purpose, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (hash_token(token), request_id, STATUS_PURPOSE, now, now + DAY_MS)
            for token, request_id in zip(tokens, request_ids, strict=True)
        ],
    )
    return tokens
