"""The registration state machine: the only code that writes a request's state.

Each transition is one transaction: a compare-and-set UPDATE, an audit row, and any
mail it causes, so a change and its consequences commit together or not at all. A
transition into a state that no longer needs the encrypted password deletes it.

The states and the request's record are `appservice/domain/registration_request.py`.
The queries and the writes that are not state changes are `RegistrationStore` in
`appservice/storage/registration_store.py`, the mail links' tokens `MailTokens` in
`appservice/storage/mail_tokens.py`: callers get those directly, not through here.
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import (
    COLUMNS,
    OPEN_STATES,
    PASSWORD_NEEDED_STATES,
    NewRequest,
    RegistrationRequest,
    State,
    initial_state,
    new_request_id,
)
from gatekeeper.appservice.storage import mail_tokens
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.mail_tokens import CONFIRM_PURPOSE
from gatekeeper.appservice.storage.registration_store import RegistrationStore, read
from gatekeeper.appservice.storage.retention import erase_withdrawn
from gatekeeper.appservice.timeutil import now_ms

# The unique index of migration 008: one live request or account per email.
LIVE_EMAIL_INDEX = "registration_request_live_email"
# What each driver raises when a unique index refuses a row.
UNIQUE_VIOLATIONS = (asyncpg.UniqueViolationError, sqlite3.IntegrityError)
SQLITE_UNIQUE_CODES = (sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)


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
    # An admin deactivated the account (appservice/domain/moderation.py).
    DEACTIVATE = ((State.ACTIVE,), State.DEACTIVATED)

    def __init__(self, sources: tuple[State, ...], target: State) -> None:
        self.sources = sources
        self.target = target

    @property
    def deletes_password(self) -> bool:
        """The target no longer needs the encrypted password: the account was made, or
        will not be. Nothing to steal afterwards."""
        return self.target not in PASSWORD_NEEDED_STATES


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


class NameAlreadyRequested(Exception):
    """Another live request holds this name (caught by the unique index under races)."""


class EmailInUse(Exception):
    """Another live request or account holds this email (`holder`, when still there)."""

    def __init__(self, holder: RegistrationRequest | None) -> None:
        super().__init__("the email belongs to another request")
        self.holder = holder


def refusing_index(error: Exception) -> str | None:
    """What names the unique index a driver's error reports, None if it reports another
    constraint. PostgreSQL gives the index's name; SQLite names an index on an expression
    ("index 'registration_request_live_email'"), else the columns ("registration_request.
    localpart")."""
    if isinstance(error, asyncpg.UniqueViolationError):
        return str(error.constraint_name or "")
    if not isinstance(error, sqlite3.IntegrityError):
        return None
    if error.sqlite_errorcode not in SQLITE_UNIQUE_CODES:
        return None
    named = re.search(r"index '([^']+)'", str(error))
    return named[1] if named else str(error).partition(": ")[2]


AfterCommit = Callable[[LoggingConnection, RegistrationRequest], Awaitable[None]]
Listener = Callable[[RegistrationRequest], None]


class Registrations:
    """A request's creation and its transitions, the only writer of its state. It reads
    with `store` and writes in `store`'s database. `on_change` hears of every committed
    change, after the commit."""

    def __init__(self, store: RegistrationStore, on_change: Listener | None = None) -> None:
        self.store = store
        self._on_change = on_change

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
        async with transaction(self.store.db) as conn:
            if new.localpart is not None and await self.store.name_requested(new.localpart, conn):
                raise NameAlreadyRequested(new.localpart)
            holder = await self.store.holder_of_email(new.email, conn=conn)
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
            except UNIQUE_VIOLATIONS as error:
                # Two sign-ups for one name or one email at once: a unique index lets one
                # through. Both databases name the index that refused.
                index = refusing_index(error)
                if index is None:
                    raise
                if index == LIVE_EMAIL_INDEX:
                    raise EmailInUse(None) from None
                raise NameAlreadyRequested(new.localpart) from None
            assert row is not None
            request = RegistrationRequest.from_row(row)
            await self._audit(conn, request.id, new.invited_by or "applicant", None, state, None)
            if after is not None:
                await after(conn, request)
        self._notify(request)
        return request

    # --- confirming the email -----------------------------------------------------------

    async def confirm_email(self, token: str) -> Result:
        """Redeem a confirmation token once: the email is verified and admins see the request."""
        async with transaction(self.store.db) as conn:
            request_id = await mail_tokens.redeem(conn, token, CONFIRM_PURPOSE)
            if request_id is None:
                used = await mail_tokens.redeemed_for(conn, token, CONFIRM_PURPOSE)
                if used is None:
                    return Result(Outcome.NOT_FOUND, None)
                return Result(Outcome.ALREADY, await self.store.get(used))
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
            result = await self._transition(conn, request_id, transition, "applicant", None, extra)
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
            },
            after,
        )

    async def withdraw(self, request_id: str, actor: str = "applicant") -> Result:
        """The applicant withdraws: the request's personal data goes with it (erasing is
        not a state change: retention.py; the tombstone and its mail links stay)."""
        result = await self.apply(request_id, Transition.WITHDRAW, actor, after=erase_withdrawn)
        if not result.changed:
            return result
        # The erasure followed the change in its transaction: the stored row is the answer.
        return Result(result.outcome, await self.store.get(request_id))

    async def expire_older_than(self, cutoff_ms: int) -> list[Result]:
        ids = await self.store.ids_created_before(Transition.EXPIRE.sources, cutoff_ms)
        return [
            await self.apply(request_id, Transition.EXPIRE, "gatekeeper", "not decided in time")
            for request_id in ids
        ]

    async def claim_for_provisioning(self) -> RegistrationRequest | None:
        """Take the oldest approved request that is due, marking it as being provisioned."""
        while True:
            request_id = await self.store.next_due_for_provisioning(now_ms())
            if request_id is None:
                return None
            request = await self.store.get(request_id)
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
            {"last_error": error},
        )

    async def finish_provisioning(
        self, request_id: str, user_id: str, after: AfterCommit | None = None
    ) -> Result:
        return await self.apply(
            request_id,
            Transition.FINISH_PROVISIONING,
            "gatekeeper",
            None,
            {"matrix_user_id": user_id, "last_error": None},
            after,
        )

    async def deactivate(
        self, request_id: str, actor: str, reason: str | None, after: AfterCommit | None = None
    ) -> Result:
        """The account is deactivated on the homeserver: its owner can no longer log in
        here either (LOGIN_STATES). `after` writes the moderation's own audit row."""
        return await self.apply(request_id, Transition.DEACTIVATE, actor, reason, None, after)

    async def resume_interrupted(self) -> int:
        """Put requests whose provisioning round died (process crash, database failure
        before the outcome was written) back in the queue. An account the seed's PATCH is
        making in a web process is not such a round (appservice/domain/seed_registrations.py)."""
        ids = await self.store.ids_interrupted(now_ms())
        for request_id in ids:
            await self.apply(
                request_id,
                Transition.RETRY_PROVISIONING,
                "gatekeeper",
                "interrupted; resumed",
                {"next_attempt_at": now_ms()},
            )
        return len(ids)

    async def apply(
        self,
        request_id: str,
        transition: Transition,
        actor: str,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
        after: AfterCommit | None = None,
    ) -> Result:
        async with transaction(self.store.db) as conn:
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
        current = await read(conn, request_id)
        if current is None:
            return Result(Outcome.NOT_FOUND, None)
        if current.state not in transition.sources:
            outcome = Outcome.ALREADY if current.state is transition.target else Outcome.REFUSED
            return Result(outcome, current)
        status, matrix_status = COLUMNS[transition.target]
        changes = {"status": status, "matrix_status": matrix_status, "updated_at": now_ms()}
        if transition.deletes_password:
            changes["password_encrypted"] = None
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
            latest = await read(conn, request_id)
            assert latest is not None  # read above; requests are never deleted
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
        if self._on_change is not None:
            self._on_change(request)
