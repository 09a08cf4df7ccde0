"""The registration state machine: the only code that writes a request's state.

Each transition is one transaction: a compare-and-set UPDATE, an audit row, and any
mail it causes, so a change and its consequences commit together or not at all.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import statistics
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from appservice.storage.database import Row, transaction
from appservice.timeutil import now_ms

REQUEST_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud, typed
REQUEST_ID_LENGTH = 8
CONFIRM_PURPOSE = "confirm-email"
STATUS_PURPOSE = "status"
RESET_PURPOSE = "reset-password"
EMAIL_CHANGE_PURPOSE = "email-change"


class State(enum.StrEnum):
    UNVERIFIED = "unverified"
    PENDING = "pending"
    APPROVED = "approved"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


# The seed's two columns for each state: status (the decision) and matrix_status (the account).
COLUMNS: dict[State, tuple[str, str]] = {
    State.UNVERIFIED: ("unverified", "pending"),
    State.PENDING: ("pending", "pending"),
    State.APPROVED: ("approved", "pending"),
    State.PROVISIONING: ("approved", "processing"),
    State.ACTIVE: ("approved", "success"),
    State.FAILED: ("approved", "failed"),
    State.REJECTED: ("rejected", "pending"),
    State.EXPIRED: ("expired", "pending"),
    State.WITHDRAWN: ("withdrawn", "pending"),
}
STATE_OF = {columns: state for state, columns in COLUMNS.items()}
OPEN_STATES = (State.UNVERIFIED, State.PENDING)
# A request whose status is unverified, pending or approved holds its wished name and its
# email (LOWER(email)); a withdrawn, rejected or expired one frees both. The queries below
# and the unique indexes of migrations 001 and 008 spell this out.
# States in which a confirmed applicant or account holder may log in to the web pages.
LOGIN_STATES = (State.PENDING, State.APPROVED, State.PROVISIONING, State.ACTIVE, State.FAILED)


def shown_state(state: State) -> str:
    """What a notice distinguishes: a queued and a running account creation look alike."""
    return State.APPROVED.value if state is State.PROVISIONING else state.value


class Transition(enum.Enum):
    CONFIRM_EMAIL = ((State.UNVERIFIED,), State.PENDING)
    # An invite stands for the admins' approval.
    CONFIRM_INVITED = ((State.UNVERIFIED,), State.APPROVED)
    APPROVE = ((State.PENDING,), State.APPROVED)
    REJECT = ((State.PENDING,), State.REJECTED)
    EXPIRE = (OPEN_STATES, State.EXPIRED)
    WITHDRAW = (OPEN_STATES, State.WITHDRAWN)
    START_PROVISIONING = ((State.APPROVED,), State.PROVISIONING)
    RETRY_PROVISIONING = ((State.PROVISIONING,), State.APPROVED)
    FINISH_PROVISIONING = ((State.PROVISIONING,), State.ACTIVE)
    FAIL_PROVISIONING = ((State.PROVISIONING,), State.FAILED)

    def __init__(self, sources: tuple[State, ...], target: State) -> None:
        self.sources = sources
        self.target = target


@dataclass(frozen=True)
class RegistrationRequest:
    id: str
    localpart: str
    email: str
    language: str
    reason: str
    password_hash: str
    password_encrypted: str | None
    status: str
    matrix_status: str
    email_verified: bool
    created_at: int
    updated_at: int
    decided_by: str | None
    decided_at: int | None
    decision_reason: str | None
    matrix_user_id: str | None
    provision_attempts: int
    next_attempt_at: int | None
    last_error: str | None
    notice_event_id: str | None
    notice_state: str | None
    pending_email: str | None
    invite_id: str | None

    @classmethod
    def from_row(cls, row: Row) -> RegistrationRequest:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["email_verified"] = bool(values["email_verified"])
        return cls(**values)

    @property
    def state(self) -> State:
        return STATE_OF[(self.status, self.matrix_status)]

    def user_id(self, domain: str) -> str:
        """The account's Matrix ID once it exists, else the one asked for."""
        return self.matrix_user_id or f"@{self.localpart}:{domain}"


@dataclass(frozen=True)
class AuditEntry:
    at: int
    actor: str
    from_state: str | None
    to_state: str
    reason: str | None


@dataclass(frozen=True)
class Statistics:
    total: int
    by_state: dict[str, int]
    median_decision_ms: float | None
    approvals_by: dict[str, int]


class Outcome(enum.Enum):
    CHANGED = "changed"
    ALREADY = "already"  # the request was already in the target state: nothing done twice
    REFUSED = "refused"  # the current state does not allow this transition
    NOT_FOUND = "not-found"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    request: RegistrationRequest | None

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED


@dataclass(frozen=True)
class NewRequest:
    localpart: str
    email: str
    language: str
    reason: str
    password_hash: str
    password_encrypted: str
    invite_id: str | None = None

    @property
    def invited_by(self) -> str | None:
        return f"invite {self.invite_id}" if self.invite_id else None


class NameAlreadyRequested(Exception):
    """Another live request holds this name (caught by the unique index under races)."""


class EmailInUse(Exception):
    """Another live request or account holds this email (`holder`, when still there)."""

    def __init__(self, holder: RegistrationRequest | None) -> None:
        super().__init__("the email belongs to another request")
        self.holder = holder


def initial_state(confirmed: bool, invited: bool) -> State:
    """A new request's state: unverified until its email is confirmed, then pending, or
    approved when an invite stands for the admins' approval."""
    if not confirmed:
        return State.UNVERIFIED
    return State.APPROVED if invited else State.PENDING


AfterCommit = Callable[[LoggingConnection, RegistrationRequest], Awaitable[None]]
Listener = Callable[[RegistrationRequest], None]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_request_id() -> str:
    return "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(REQUEST_ID_LENGTH))


class Registrations:
    """Requests and their transitions. Listeners hear of every committed change."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.listeners: list[Listener] = []

    # --- reading ---------------------------------------------------------------------

    async def get(self, request_id: str) -> RegistrationRequest | None:
        row = await self.db.fetchrow(
            "SELECT * FROM registration_request WHERE id=$1", request_id.strip().lower()
        )
        return RegistrationRequest.from_row(row) if row else None

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

    async def count_in_state(self, state: State) -> int:
        status, matrix_status = COLUMNS[state]
        return int(
            await self.db.fetchval(
                "SELECT COUNT(*) FROM registration_request WHERE status=$1 AND matrix_status=$2",
                status,
                matrix_status,
            )
        )

    async def search(self, text: str, limit: int = 20) -> list[RegistrationRequest]:
        pattern = "%" + text.lower().replace("\\", "").replace("%", "").replace("_", "") + "%"
        rows = await self.db.fetch(
            "SELECT * FROM registration_request WHERE localpart LIKE $1 OR LOWER(email) LIKE $1"
            " OR id LIKE $1 ORDER BY created_at DESC LIMIT $2",
            pattern,
            limit,
        )
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
            if row["status"] == "approved" and row["decided_by"]:
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
            "SELECT * FROM registration_request WHERE LOWER(email)=LOWER($1)"
            " AND status='unverified' ORDER BY created_at DESC, id LIMIT 1",
            email,
        )
        return RegistrationRequest.from_row(row) if row else None

    async def for_login(self, email: str) -> RegistrationRequest | None:
        """The newest request of this address whose owner may log in."""
        rows = await self.db.fetch(
            "SELECT * FROM registration_request WHERE LOWER(email)=LOWER($1)"
            " AND email_verified ORDER BY created_at DESC",
            email.strip(),
        )
        for row in rows:
            request = RegistrationRequest.from_row(row)
            if request.state in LOGIN_STATES:
                return request
        return None

    # --- account attributes (not the request's state) ---------------------------------

    async def set_password_hash(self, request_id: str, password_hash: str) -> None:
        await self.db.execute(
            "UPDATE registration_request SET password_hash=$2 WHERE id=$1",
            request_id,
            password_hash,
        )

    async def set_password(
        self, request_id: str, password_hash: str, password_encrypted: str
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

    async def redeem_token(self, token: str, purpose: str) -> str | None:
        """Use a single-use mail token: the request ID for the one caller that wins."""
        value = await self.db.fetchval(
            "UPDATE email_token SET used_at=$3 WHERE token_hash=$1 AND purpose=$2"
            " AND used_at IS NULL AND expires_at > $3 RETURNING request_id",
            hash_token(token),
            purpose,
            now_ms(),
        )
        return None if value is None else str(value)

    async def void_tokens(self, request_id: str, purpose: str) -> None:
        await self.db.execute(
            "UPDATE email_token SET used_at=$3 WHERE request_id=$1 AND purpose=$2"
            " AND used_at IS NULL",
            request_id,
            purpose,
            now_ms(),
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

    async def name_requested(self, localpart: str) -> bool:
        row = await self.db.fetchval(
            "SELECT 1 FROM registration_request WHERE localpart=$1"
            " AND status IN ('unverified', 'pending', 'approved')",
            localpart,
        )
        return row is not None

    async def holder_of_email(
        self, email: str, other_than: str = "", conn: LoggingConnection | None = None
    ) -> RegistrationRequest | None:
        """The live request or account that holds this email, if any."""
        row = await (conn or self.db).fetchrow(
            "SELECT * FROM registration_request WHERE LOWER(email)=LOWER($1)"
            " AND status IN ('unverified', 'pending', 'approved') AND id <> $2",
            email.strip(),
            other_than,
        )
        return RegistrationRequest.from_row(row) if row else None

    async def notices_behind(self, limit: int = 100) -> list[RegistrationRequest]:
        """Requests whose admin-room notice is missing or shows an older state."""
        # The WHERE is the partial index registration_request_notice_behind's (migration
        # 006), word for word, so both databases read only the requests that are behind.
        rows = await self.db.fetch(
            "SELECT * FROM registration_request"
            " WHERE (notice_event_id IS NULL AND (status='pending'"
            "   OR (status='approved' AND invite_id IS NOT NULL)))"
            " OR (notice_event_id IS NOT NULL AND notice_state <> ("
            "   CASE WHEN status='approved' THEN"
            "     CASE matrix_status WHEN 'success' THEN 'active' WHEN 'failed' THEN 'failed'"
            "       ELSE 'approved' END"
            "   ELSE status END))"
            " ORDER BY updated_at LIMIT $1",
            limit,
        )
        return [RegistrationRequest.from_row(row) for row in rows]

    async def next_provisioning_due(self) -> int | None:
        """When the next approved request may be tried, in ms (None: nothing waits)."""
        value = await self.db.fetchval(
            "SELECT MIN(next_attempt_at) FROM registration_request"
            " WHERE status='approved' AND matrix_status='pending'"
        )
        return None if value is None else int(value)

    # --- notice bookkeeping (not a state change) --------------------------------------

    async def record_notice(self, request_id: str, event_id: str, shown: State) -> None:
        await self.db.execute(
            "UPDATE registration_request SET notice_event_id=$2, notice_state=$3 WHERE id=$1",
            request_id,
            event_id,
            shown_state(shown),
        )

    # --- creating ----------------------------------------------------------------------

    async def create(
        self,
        new: NewRequest,
        *,
        confirmed: bool,
        after: AfterCommit | None = None,
    ) -> RegistrationRequest:
        """Store a sign-up as unverified, or (no confirmation needed) pending — approved
        when it came with an invite."""
        state = initial_state(confirmed, invited=new.invite_id is not None)
        status, matrix_status = COLUMNS[state]
        now = now_ms()
        decided_by = new.invited_by if state is State.APPROVED else None
        async with transaction(self.db) as conn:
            if await conn.fetchval(
                "SELECT 1 FROM registration_request WHERE localpart=$1"
                " AND status IN ('unverified', 'pending', 'approved')",
                new.localpart,
            ):
                raise NameAlreadyRequested(new.localpart)
            holder = await self.holder_of_email(new.email, conn=conn)
            if holder is not None:
                raise EmailInUse(holder)
            request_id = new_request_id()
            try:
                row = await conn.fetchrow(
                    "INSERT INTO registration_request (id, localpart, email, language, reason,"
                    " password_hash, password_encrypted, status, matrix_status, email_verified,"
                    " created_at, updated_at, provision_attempts, next_attempt_at, invite_id,"
                    " decided_by, decided_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 0, $11, $12,"
                    " $13, $14) RETURNING *",
                    request_id,
                    new.localpart,
                    new.email,
                    new.language,
                    new.reason,
                    new.password_hash,
                    new.password_encrypted,
                    status,
                    matrix_status,
                    confirmed,
                    now,
                    new.invite_id,
                    decided_by,
                    now if decided_by else None,
                )
            except Exception as error:
                # Two sign-ups for one name or one email at once: a unique index lets one
                # through. Both databases name the index that refused.
                if "unique" not in str(error).lower():
                    raise
                if "registration_request_live_email" in str(error):
                    raise EmailInUse(None) from None
                raise NameAlreadyRequested(new.localpart) from None
            assert row is not None
            request = RegistrationRequest.from_row(row)
            await self._audit(conn, request.id, new.invited_by or "applicant", None, state, None)
            if after is not None:
                await after(conn, request)
        self._notify(request)
        return request

    # --- tokens sent by mail -----------------------------------------------------------

    async def issue_token(
        self, conn: LoggingConnection, request_id: str, purpose: str, valid_ms: int
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

    async def request_for_token(self, token: str, purpose: str) -> RegistrationRequest | None:
        """The request a still-valid (not single-use) token belongs to."""
        row = await self.db.fetchrow(
            "SELECT r.* FROM email_token t JOIN registration_request r ON r.id = t.request_id"
            " WHERE t.token_hash=$1 AND t.purpose=$2 AND t.expires_at > $3 AND t.used_at IS NULL",
            hash_token(token),
            purpose,
            now_ms(),
        )
        return RegistrationRequest.from_row(row) if row else None

    async def confirm_email(self, token: str) -> Result:
        """Redeem a confirmation token once: the email is verified and admins see the request."""
        async with transaction(self.db) as conn:
            request_id = await conn.fetchval(
                "UPDATE email_token SET used_at=$3 WHERE token_hash=$1 AND purpose=$2"
                " AND used_at IS NULL AND expires_at > $3 RETURNING request_id",
                hash_token(token),
                CONFIRM_PURPOSE,
                now_ms(),
            )
            if request_id is None:
                used = await conn.fetchval(
                    "SELECT request_id FROM email_token WHERE token_hash=$1 AND purpose=$2"
                    " AND used_at IS NOT NULL",
                    hash_token(token),
                    CONFIRM_PURPOSE,
                )
                if used is None:
                    return Result(Outcome.NOT_FOUND, None)
                return Result(Outcome.ALREADY, await self.get(str(used)))
            invite_id = await conn.fetchval(
                "SELECT invite_id FROM registration_request WHERE id=$1", request_id
            )
            extra: dict[str, object]
            if invite_id is None:
                transition, extra = Transition.CONFIRM_EMAIL, {"email_verified": True}
            else:
                now = now_ms()
                transition = Transition.CONFIRM_INVITED
                extra = {
                    "email_verified": True,
                    "decided_by": f"invite {invite_id}",
                    "decided_at": now,
                    "next_attempt_at": now,
                }
            result = await self._transition(
                conn, str(request_id), transition, "applicant", None, extra
            )
        self._notify_result(result)
        return result

    # --- transitions -------------------------------------------------------------------

    async def approve(self, request_id: str, actor: str) -> Result:
        return await self.apply(
            request_id,
            Transition.APPROVE,
            actor,
            extra={"decided_by": actor, "decided_at": now_ms(), "next_attempt_at": now_ms()},
        )

    async def reject(
        self, request_id: str, actor: str, reason: str | None, after: AfterCommit | None = None
    ) -> Result:
        return await self.apply(
            request_id,
            Transition.REJECT,
            actor,
            reason,
            {
                "decided_by": actor,
                "decided_at": now_ms(),
                "decision_reason": reason,
                "password_encrypted": None,
            },
            after,
        )

    async def withdraw(self, request_id: str, actor: str = "applicant") -> Result:
        return await self.apply(
            request_id, Transition.WITHDRAW, actor, extra={"password_encrypted": None}
        )

    async def expire_older_than(self, cutoff_ms: int) -> list[Result]:
        rows = await self.db.fetch(
            "SELECT id FROM registration_request WHERE status IN ('unverified', 'pending')"
            " AND created_at < $1",
            cutoff_ms,
        )
        return [
            await self.apply(
                row["id"],
                Transition.EXPIRE,
                "gatekeeper",
                "not decided in time",
                {"password_encrypted": None},
            )
            for row in rows
        ]

    async def claim_for_provisioning(self) -> RegistrationRequest | None:
        """Take the oldest approved request that is due, marking it as being provisioned."""
        while True:
            row = await self.db.fetchrow(
                "SELECT id FROM registration_request WHERE status='approved'"
                " AND matrix_status='pending' AND next_attempt_at <= $1"
                " ORDER BY next_attempt_at LIMIT 1",
                now_ms(),
            )
            if row is None:
                return None
            request = await self.get(row["id"])
            assert request is not None
            result = await self.apply(
                request.id,
                Transition.START_PROVISIONING,
                "gatekeeper",
                extra={"provision_attempts": request.provision_attempts + 1},
            )
            if result.changed:
                return result.request

    async def retry_provisioning(self, request_id: str, error: str, next_attempt_at: int) -> Result:
        return await self.apply(
            request_id,
            Transition.RETRY_PROVISIONING,
            "gatekeeper",
            error,
            {"last_error": error, "next_attempt_at": next_attempt_at},
        )

    async def fail_provisioning(self, request_id: str, error: str) -> Result:
        return await self.apply(
            request_id,
            Transition.FAIL_PROVISIONING,
            "gatekeeper",
            error,
            {"last_error": error, "password_encrypted": None},
        )

    async def finish_provisioning(
        self, request_id: str, user_id: str, after: AfterCommit | None = None
    ) -> Result:
        # The password's ciphertext goes as the account comes: nothing to steal afterwards.
        return await self.apply(
            request_id,
            Transition.FINISH_PROVISIONING,
            "gatekeeper",
            None,
            {"matrix_user_id": user_id, "password_encrypted": None, "last_error": None},
            after,
        )

    async def resume_interrupted(self) -> int:
        """Put requests whose provisioning round died (process crash, database failure
        before the outcome was written) back in the queue."""
        rows = await self.db.fetch(
            "SELECT id FROM registration_request"
            " WHERE status='approved' AND matrix_status='processing'"
        )
        for row in rows:
            await self.apply(
                row["id"],
                Transition.RETRY_PROVISIONING,
                "gatekeeper",
                "interrupted; resumed",
                {"next_attempt_at": now_ms()},
            )
        return len(rows)

    async def apply(
        self,
        request_id: str,
        transition: Transition,
        actor: str,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
        after: AfterCommit | None = None,
    ) -> Result:
        async with transaction(self.db) as conn:
            result = await self._transition(
                conn, request_id.strip().lower(), transition, actor, reason, extra, after
            )
        self._notify_result(result)
        return result

    async def _transition(
        self,
        conn: LoggingConnection,
        request_id: str,
        transition: Transition,
        actor: str,
        reason: str | None,
        extra: Mapping[str, Any] | None = None,
        after: AfterCommit | None = None,
    ) -> Result:
        row = await conn.fetchrow("SELECT * FROM registration_request WHERE id=$1", request_id)
        if row is None:
            return Result(Outcome.NOT_FOUND, None)
        current = RegistrationRequest.from_row(row)
        if current.state not in transition.sources:
            outcome = Outcome.ALREADY if current.state is transition.target else Outcome.REFUSED
            return Result(outcome, current)
        status, matrix_status = COLUMNS[transition.target]
        changes = {"status": status, "matrix_status": matrix_status, "updated_at": now_ms()}
        changes.update(extra or {})
        assignments = ", ".join(f"{column}=${i}" for i, column in enumerate(changes, start=4))
        # Compare-and-set: a concurrent transition that committed first makes this a no-op.
        updated = await conn.fetchrow(
            f"UPDATE registration_request SET {assignments}"  # noqa: S608 (column names are ours)
            " WHERE id=$1 AND status=$2 AND matrix_status=$3 RETURNING *",
            request_id,
            current.status,
            current.matrix_status,
            *changes.values(),
        )
        if updated is None:
            row = await conn.fetchrow("SELECT * FROM registration_request WHERE id=$1", request_id)
            assert row is not None  # read above; requests are never deleted
            latest = RegistrationRequest.from_row(row)
            outcome = Outcome.ALREADY if latest.state is transition.target else Outcome.REFUSED
            return Result(outcome, latest)
        request = RegistrationRequest.from_row(updated)
        await self._audit(conn, request_id, actor, current.state, transition.target, reason)
        if after is not None:
            await after(conn, request)
        return Result(Outcome.CHANGED, request)

    @staticmethod
    async def _audit(
        conn: LoggingConnection,
        request_id: str,
        actor: str,
        from_state: State | None,
        to_state: State,
        reason: str | None,
    ) -> None:
        await conn.execute(
            "INSERT INTO registration_audit (request_id, at, actor, from_state, to_state, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            request_id,
            now_ms(),
            actor,
            from_state.value if from_state else None,
            to_state.value,
            reason,
        )

    def _notify_result(self, result: Result) -> None:
        if result.changed and result.request is not None:
            self._notify(result.request)

    def _notify(self, request: RegistrationRequest) -> None:
        for listener in self.listeners:
            listener(request)
