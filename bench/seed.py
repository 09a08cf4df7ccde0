"""Rows written straight into Gatekeeper's database, for scenarios that need many requests
to exist without paying a sign-up (and an argon2 hash) for each."""

from __future__ import annotations

import secrets

from mautrix.util.async_db import Database

from gatekeeper.appservice.domain.registration_request import COLUMNS, State
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.mail_tokens import hash_token
from gatekeeper.appservice.timeutil import now_ms

DAY_MS = 86_400_000
# Rows per INSERT round: 100,000 requests are seeded in seconds, not minutes.
BATCH = 5000


async def _insert_in_batches(db: Database, query: str, rows: list[tuple[object, ...]]) -> None:
    """Each batch one transaction: SQLite commits each statement of its own otherwise."""
    for start in range(0, len(rows), BATCH):
        async with transaction(db) as conn:
            await conn.executemany(query, rows[start : start + BATCH])


async def seeded_requests(
    db: Database,
    prefix: str,
    count: int,
    password_hash: str,
    state: State = State.PENDING,
) -> list[tuple[str, str]]:
    """`count` requests in `state`: pending ones confirmed, with their notices already
    posted (so the bot leaves them alone); unverified ones waiting for their mail link.
    One `password_hash` serves every row (a hash per row would cost the seeding minutes).
    Returns their (id, email)."""
    now = now_ms()
    status, matrix_status = COLUMNS[state]
    confirmed = state is not State.UNVERIFIED
    rows: list[tuple[object, ...]] = [
        (
            f"{prefix}{index:06d}",
            f"{prefix}-{index}",
            f"{prefix}-{index}@example.org",
            password_hash,
            now - index * 1000,
            f"$seeded-{prefix}-{index}" if confirmed else None,
            status,
            matrix_status,
            confirmed,
        )
        for index in range(count)
    ]
    await _insert_in_batches(
        db,
        "INSERT INTO registration_request (id, localpart, email, language, password_hash,"
        " status, matrix_status, email_verified, created_at, updated_at, next_attempt_at,"
        " notice_event_id, notice_state)"
        " VALUES ($1, $2, $3, 'en', $4, $7, $8, $9, $5, $5, $5, $6, 'pending')",
        rows,
    )
    return [(str(row[0]), str(row[2])) for row in rows]


async def mail_tokens(db: Database, request_ids: list[str], purpose: str) -> list[str]:
    """A fresh mail-link token (as the confirmation mail carries) for each request."""
    tokens = [secrets.token_urlsafe(32) for _ in request_ids]
    now = now_ms()
    await _insert_in_batches(
        db,
        "INSERT INTO email_token (token_hash, request_id, purpose, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (hash_token(token), request_id, purpose, now, now + DAY_MS)
            for token, request_id in zip(tokens, request_ids, strict=True)
        ],
    )
    return tokens
