"""Queries of the `registration_request` and `registration_audit` tables that are not
state changes: reading requests, search and statistics, the account's attributes
(password, language, email), and the admin-room notice bookkeeping.

A request's state is written only by `appservice/domain/registrations.py`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from mautrix.util.async_db import Database, Scheme
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import (
    COLUMNS,
    HOLDING_STATES,
    LOGIN_STATES,
    STATE_OF,
    AuditEntry,
    RegistrationRequest,
    State,
    Statistics,
    shown_state,
)
from gatekeeper.appservice.storage.database import Row, transaction

Connection = LoggingConnection | Database

# What `!search` matches: a piece of the user name, the email in any case or the ID.
SEARCHED_COLUMNS_MATCH = "(localpart LIKE $1 OR LOWER(email) LIKE $1 OR id LIKE $1)"
# The expression of PostgreSQL's trigram index (migration 013), word for word: the
# planner uses an expression index only for the very same expression.
SEARCH_INDEX_EXPRESSION = "(COALESCE(localpart, '') || ' ' || LOWER(email) || ' ' || id)"
# A trigram index holds pieces of three letters: it cannot find a shorter text.
TRIGRAM = 3


@dataclass(frozen=True)
class LoginAccount:
    """The account a login names, and whether its second factor (TOTP) is on."""

    request: RegistrationRequest
    two_factor: bool


def status_in(states: Sequence[State]) -> str:
    """SQL that matches the requests in `states` by their status alone: `status IN (...)`.

    The states must hold every state of their statuses (approved is four states), so that
    the status is enough to tell them from the others."""
    statuses = list(dict.fromkeys(COLUMNS[state][0] for state in states))
    others = [s for s in State if s not in states and COLUMNS[s][0] in statuses]
    if others:
        raise ValueError(f"the status does not tell {states} from {others}")
    return "status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


def in_state(state: State) -> str:
    """SQL that matches the requests in `state`: its two columns."""
    status, matrix_status = COLUMNS[state]
    return f"status='{status}' AND matrix_status='{matrix_status}'"


async def read(conn: Connection, request_id: str) -> RegistrationRequest | None:
    row = await conn.fetchrow("SELECT * FROM registration_request WHERE id=$1", request_id)
    return RegistrationRequest.from_row(row) if row else None


class RegistrationStore:
    """Reads requests and writes what is not their state."""

    db: Database

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- reading ---------------------------------------------------------------------

    async def get(self, request_id: str) -> RegistrationRequest | None:
        return await read(self.db, request_id.strip().lower())

    async def by_notice(self, event_id: str) -> RegistrationRequest | None:
        row = await self.db.fetchrow(
            "SELECT * FROM registration_request WHERE notice_event_id=$1", event_id
        )
        return RegistrationRequest.from_row(row) if row else None

    async def in_state(
        self, state: State, limit: int = 50, offset: int = 0
    ) -> list[RegistrationRequest]:
        status, matrix_status = COLUMNS[state]
        rows = await self.db.fetch(
            "SELECT * FROM registration_request WHERE status=$1 AND matrix_status=$2"
            " ORDER BY created_at, id LIMIT $3 OFFSET $4",
            status,
            matrix_status,
            limit,
            offset,
        )
        return [RegistrationRequest.from_row(row) for row in rows]

    async def count_in_state(self, state: State, at_most: int) -> int:
        """How many requests are in `state`, counting no further than `at_most`: a count of
        them all reads every one (30 ms at 100,000)."""
        status, matrix_status = COLUMNS[state]
        return int(
            await self.db.fetchval(
                "SELECT COUNT(*) FROM (SELECT 1 FROM registration_request"
                " WHERE status=$1 AND matrix_status=$2 LIMIT $3) AS counted",
                status,
                matrix_status,
                at_most,
            )
        )

    async def ids_in_state(self, state: State) -> list[str]:
        rows = await self.db.fetch(
            f"SELECT id FROM registration_request WHERE {in_state(state)}"  # noqa: S608 (ours)
        )
        return [row["id"] for row in rows]

    async def ids_interrupted(self, now: int) -> list[str]:
        """Requests marked as being provisioned but for the ones whose account the seed's
        PATCH is making right now (seed_registration.creating_until, migration 011)."""
        rows = await self.db.fetch(
            f"SELECT id FROM registration_request WHERE {in_state(State.PROVISIONING)}"  # noqa: S608
            " AND id NOT IN (SELECT request_id FROM seed_registration WHERE creating_until > $1)",
            now,
        )
        return [row["id"] for row in rows]

    async def ids_created_before(self, states: Sequence[State], cutoff_ms: int) -> list[str]:
        rows = await self.db.fetch(
            f"SELECT id FROM registration_request WHERE {status_in(states)}"  # noqa: S608 (ours)
            " AND created_at < $1",
            cutoff_ms,
        )
        return [row["id"] for row in rows]

    async def search(self, text: str, limit: int = 20) -> list[RegistrationRequest]:
        """The newest requests whose user name, email or ID holds `text`, in any case.

        A text of three letters or more is looked up in the trigram index of migration 013
        first, which yields every request that may match; fewer letters have no trigram,
        and the table is read whole."""
        wanted = text.lower().replace("\\", "").replace("%", "").replace("_", "")
        source, matches = "registration_request", SEARCHED_COLUMNS_MATCH
        if len(wanted) >= TRIGRAM and self.db.scheme == Scheme.SQLITE:
            source = (
                "registration_search JOIN registration_request"
                " ON registration_request.rowid = registration_search.rowid"
            )
            matches = f"registration_search.text LIKE $1 AND {SEARCHED_COLUMNS_MATCH}"
        elif len(wanted) >= TRIGRAM:
            matches = f"{SEARCH_INDEX_EXPRESSION} LIKE $1 AND {SEARCHED_COLUMNS_MATCH}"
        query = (
            f"SELECT registration_request.* FROM {source} WHERE {matches}"  # noqa: S608 (ours)
            " ORDER BY created_at DESC LIMIT $2"
        )
        rows: Sequence[Row]
        if self.db.scheme == Scheme.SQLITE:
            rows = await self.db.fetch(query, f"%{wanted}%", limit)
        else:
            async with transaction(self.db) as conn:
                # After five runs of a prepared statement PostgreSQL may keep one plan for
                # any text, made without looking at it: walking every request newest first,
                # 44 ms at 100,000. Planned for its text, a search uses the trigram index
                # unless the text is common enough that the newest requests hold `limit`.
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                rows = await conn.fetch(query, f"%{wanted}%", limit)
        return [RegistrationRequest.from_row(row) for row in rows]

    async def statistics(self, since_ms: int) -> Statistics:
        """Requests made since `since_ms`: by state, time to decision, approvals by admin."""
        rows = await self.db.fetch(
            "SELECT status, matrix_status, created_at, decided_at, decided_by"
            " FROM registration_request WHERE created_at >= $1",
            since_ms,
        )
        by_state: dict[str, int] = {}
        approvals: dict[str, int] = {}
        waits = []
        for row in rows:
            state = STATE_OF[(row["status"], row["matrix_status"])]
            by_state[state.value] = by_state.get(state.value, 0) + 1
            if row["decided_at"] is not None:
                waits.append(int(row["decided_at"]) - int(row["created_at"]))
            if row["status"] == COLUMNS[State.APPROVED][0] and row["decided_by"]:
                approvals[row["decided_by"]] = approvals.get(row["decided_by"], 0) + 1
        return Statistics(
            len(rows), by_state, statistics.median(waits) if waits else None, approvals
        )

    async def history(self, request_id: str) -> list[AuditEntry]:
        rows = await self.db.fetch(
            "SELECT at, actor, from_state, to_state, reason FROM registration_audit"
            " WHERE request_id=$1 ORDER BY at, to_state",
            request_id,
        )
        return [AuditEntry(**{k: row[k] for k in AuditEntry.__dataclass_fields__}) for row in rows]

    async def newest_unconfirmed(self, email: str) -> RegistrationRequest | None:
        """The newest unverified request of this address, if any."""
        row = await self.db.fetchrow(
            "SELECT * FROM registration_request WHERE LOWER(email)=LOWER($1)"  # noqa: S608
            f" AND {status_in((State.UNVERIFIED,))}"
            " ORDER BY created_at DESC, id LIMIT 1",
            email,
        )
        return RegistrationRequest.from_row(row) if row else None

    async def for_login(self, identifier: str, domain: str) -> RegistrationRequest | None:
        """The newest request whose owner may log in, named as they may type it: the email
        address, the user name (`ann`) or the Matrix ID (`@ann:domain`) on `domain`."""
        account = await self.login_account(identifier, domain)
        return account.request if account is not None else None

    async def login_account(self, identifier: str, domain: str) -> LoginAccount | None:
        """`for_login`'s request, with whether its second factor is on: a login reads both
        in one statement."""
        typed = identifier.strip()
        if "@" in typed[1:]:
            where, value = "LOWER(email)=LOWER($1)", typed
        else:
            localpart, colon, server = typed.removeprefix("@").partition(":")
            if colon and server.lower() != domain.lower():
                return None  # another server's user has no account here
            # Localparts are lower case; Matrix clients accept them typed in any case too.
            where, value = "localpart=$1", localpart.lower()
        rows = await self.db.fetch(
            "SELECT *, EXISTS (SELECT 1 FROM totp"  # noqa: S608 (ours)
            " WHERE totp.request_id=registration_request.id"
            " AND totp.secret_encrypted IS NOT NULL) AS two_factor"
            f" FROM registration_request WHERE {where} AND email_verified"
            " ORDER BY created_at DESC",
            value,
        )
        for row in rows:
            request = RegistrationRequest.from_row(row)
            if request.state in LOGIN_STATES:
                return LoginAccount(request, bool(row["two_factor"]))
        return None

    async def name_requested(self, localpart: str, conn: Connection | None = None) -> bool:
        row = await (conn or self.db).fetchval(
            "SELECT 1 FROM registration_request WHERE localpart=$1"  # noqa: S608 (ours)
            f" AND {status_in(HOLDING_STATES)}",
            localpart,
        )
        return row is not None

    async def holder_of_email(
        self, email: str, other_than: str = "", conn: Connection | None = None
    ) -> RegistrationRequest | None:
        """The live request or account that holds this email, if any."""
        row = await (conn or self.db).fetchrow(
            "SELECT * FROM registration_request WHERE LOWER(email)=LOWER($1)"  # noqa: S608
            f" AND {status_in(HOLDING_STATES)} AND id <> $2",
            email.strip(),
            other_than,
        )
        return RegistrationRequest.from_row(row) if row else None

    # --- account attributes (not the request's state) ---------------------------------

    async def set_password_hash(self, request_id: str, password_hash: str) -> None:
        await self.db.execute(
            "UPDATE registration_request SET password_hash=$2 WHERE id=$1",
            request_id,
            password_hash,
        )

    async def set_password(
        self, request_id: str, password_hash: str, password_encrypted: str | None
    ) -> bool:
        """A new password; True if the account is still to be made, and will be made with it.

        Until provisioning takes the request, it keeps the password for the account to come;
        one statement, so a provisioning round that takes it meanwhile sees one or the other.
        """
        to_come = await self.db.fetchval(
            "UPDATE registration_request SET password_hash=$2, password_encrypted="
            " CASE WHEN matrix_status='pending' AND password_encrypted IS NOT NULL"
            " THEN $3 ELSE password_encrypted END WHERE id=$1"
            " RETURNING matrix_status='pending' AND password_encrypted IS NOT NULL",
            request_id,
            password_hash,
            password_encrypted,
        )
        return bool(to_come)

    async def set_language(self, request_id: str, language: str) -> None:
        await self.db.execute(
            "UPDATE registration_request SET language=$2 WHERE id=$1", request_id, language
        )

    async def set_pending_email(self, request_id: str, email: str | None) -> None:
        await self.db.execute(
            "UPDATE registration_request SET pending_email=$2 WHERE id=$1", request_id, email
        )

    async def adopt_pending_email(self, request_id: str) -> str | None:
        """Make the confirmed new address the request's email; returns the old one.

        None, and the change dropped, if another request or account took the new address
        meanwhile: an email belongs to one of them at a time."""
        async with transaction(self.db) as conn:
            row = await conn.fetchrow(
                "SELECT email, pending_email FROM registration_request WHERE id=$1", request_id
            )
            if row is None or row["pending_email"] is None:
                return None
            if await self.holder_of_email(row["pending_email"], request_id, conn):
                await conn.execute(
                    "UPDATE registration_request SET pending_email=NULL WHERE id=$1", request_id
                )
                return None
            await conn.execute(
                "UPDATE registration_request SET email=pending_email, pending_email=NULL"
                " WHERE id=$1",
                request_id,
            )
            return str(row["email"])

    # --- provisioning queue ------------------------------------------------------------

    async def next_due_for_provisioning(self, now: int) -> str | None:
        """The ID of the approved request that waits longest past its next attempt. One
        without a name yet waits for it (its account is made with the name, by
        appservice/domain/seed_registrations.py)."""
        value = await self.db.fetchval(
            f"SELECT id FROM registration_request WHERE {in_state(State.APPROVED)}"  # noqa: S608
            " AND localpart IS NOT NULL AND next_attempt_at <= $1"
            " ORDER BY next_attempt_at LIMIT 1",
            now,
        )
        return None if value is None else str(value)

    async def next_provisioning_due(self) -> int | None:
        """When the next approved request may be tried, in ms (None: nothing waits)."""
        value = await self.db.fetchval(
            "SELECT MIN(next_attempt_at) FROM registration_request"  # noqa: S608 (ours)
            f" WHERE {in_state(State.APPROVED)} AND localpart IS NOT NULL"
        )
        return None if value is None else int(value)

    # --- notice bookkeeping (not a state change) --------------------------------------

    async def notices_behind(self, limit: int = 100) -> list[RegistrationRequest]:
        """Requests whose admin-room notice is missing or shows an older state."""
        # The WHERE is the partial index registration_request_notice_behind's (migration
        # 009), word for word, so both databases read only the requests that are behind.
        rows = await self.db.fetch(
            "SELECT * FROM registration_request"
            " WHERE (notice_event_id IS NULL AND (status='pending'"
            "   OR (status='approved' AND invite_id IS NOT NULL)))"
            " OR (notice_event_id IS NOT NULL AND notice_state <> ("
            "   CASE WHEN status='approved' THEN"
            "     CASE matrix_status WHEN 'success' THEN 'active' WHEN 'failed' THEN 'failed'"
            "       WHEN 'deactivated' THEN 'deactivated' ELSE 'approved' END"
            "   ELSE status END))"
            " ORDER BY updated_at LIMIT $1",
            limit,
        )
        return [RegistrationRequest.from_row(row) for row in rows]

    async def record_notice(self, request_id: str, event_id: str, shown: State) -> None:
        await self.db.execute(
            "UPDATE registration_request SET notice_event_id=$2, notice_state=$3 WHERE id=$1",
            request_id,
            event_id,
            shown_state(shown),
        )
