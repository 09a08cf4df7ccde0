"""What Gatekeeper holds about one account holder, for them to download (GDPR art. 15, 20).

Everything docs/privacy.md lists for a request, but no secrets: no password hash, no
encrypted password, two-factor secret, token or recovery-code hash (a copy of those would
only help whoever gets hold of the file).
"""

from __future__ import annotations

from typing import Any

from mautrix.util.async_db import Database

from gatekeeper.appservice.domain.registration_request import RegistrationRequest

SECRET_COLUMNS = ("password_hash", "password_encrypted")


def _rows(rows: list[Any], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{column: row[column] for column in columns} for row in rows]


async def personal_data(db: Database, request: RegistrationRequest) -> dict[str, Any]:
    """The request's record, its history, moderation, two-factor state and mails."""
    record = {name: value for name, value in vars(request).items() if name not in SECRET_COLUMNS}
    record["state"] = request.state.value
    history = await db.fetch(
        "SELECT at, actor, from_state, to_state, reason FROM registration_audit"
        " WHERE request_id=$1 ORDER BY at",
        request.id,
    )
    moderation = await db.fetch(
        "SELECT at, actor, action, erase, reason, outcome FROM account_moderation"
        " WHERE request_id=$1 ORDER BY at",
        request.id,
    )
    resets = await db.fetch(
        "SELECT at, actor, reason FROM two_factor_reset WHERE request_id=$1 ORDER BY at",
        request.id,
    )
    totp = await db.fetchrow(
        "SELECT secret_encrypted IS NOT NULL AS enabled FROM totp WHERE request_id=$1", request.id
    )
    mails = await db.fetch(
        "SELECT recipient, subject, created_at, sent_at FROM mail_outbox"
        " WHERE LOWER(recipient) IN (LOWER($1), LOWER($2)) ORDER BY created_at",
        request.email,
        request.pending_email or request.email,
    )
    sessions = await db.fetchval("SELECT COUNT(*) FROM web_session WHERE request_id=$1", request.id)
    return {
        "request": record,
        "history": _rows(history, ("at", "actor", "from_state", "to_state", "reason")),
        "moderation": [
            {**row, "erase": bool(row["erase"])}
            for row in _rows(moderation, ("at", "actor", "action", "erase", "reason", "outcome"))
        ],
        "two_factor": {
            "on": bool(totp["enabled"]) if totp is not None else False,
            "resets": _rows(resets, ("at", "actor", "reason")),
        },
        "mails": _rows(mails, ("recipient", "subject", "created_at", "sent_at")),
        "web_sessions": int(sessions),
        "times": "milliseconds since 1970-01-01 UTC",
    }
