"""A registration request as stored: its states, its record and the values read with it.

The state machine that moves a request between these states is
`appservice/domain/registrations.py`; the queries are
`appservice/storage/registration_store.py`.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, fields

from gatekeeper.appservice.matrix_ids import user_id
from gatekeeper.appservice.storage.database import Row

REQUEST_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud, typed
REQUEST_ID_LENGTH = 8


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
    # The account was made, then deactivated by an admin (!deactivate).
    DEACTIVATED = "deactivated"


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
    State.DEACTIVATED: ("approved", "deactivated"),
}
STATE_OF = {columns: state for state, columns in COLUMNS.items()}
OPEN_STATES = (State.UNVERIFIED, State.PENDING)
# A request whose status is unverified, pending or approved holds its wished name and its
# email (LOWER(email)); a withdrawn, rejected or expired one frees both. The unique indexes
# of migrations 002 and 008 spell this out. A deactivated account keeps both: Synapse never
# gives its name to anyone else, and its address does not sign up again.
HOLDING_STATES = (
    State.UNVERIFIED,
    State.PENDING,
    State.APPROVED,
    State.PROVISIONING,
    State.ACTIVE,
    State.FAILED,
    State.DEACTIVATED,
)
# States in which a confirmed applicant or account holder may log in to the web pages
# (not deactivated: the account is gone, and so is everything the pages could change).
LOGIN_STATES = (State.PENDING, State.APPROVED, State.PROVISIONING, State.ACTIVE, State.FAILED)
# States whose request still needs the encrypted password: the account is yet to be made.
# A transition into any other state deletes it.
PASSWORD_NEEDED_STATES = (State.UNVERIFIED, State.PENDING, State.APPROVED, State.PROVISIONING)


def shown_state(state: State) -> str:
    """What a notice distinguishes: a queued and a running account creation look alike."""
    return State.APPROVED.value if state is State.PROVISIONING else state.value


def initial_state(confirmed: bool, invited: bool) -> State:
    """A new request's state: unverified until its email is confirmed, then pending, or
    approved when an invite stands for the admins' approval."""
    if not confirmed:
        return State.UNVERIFIED
    return State.APPROVED if invited else State.PENDING


def new_request_id() -> str:
    return "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(REQUEST_ID_LENGTH))


@dataclass(frozen=True)
class RegistrationRequest:
    id: str
    # None until its applicant names it: a request made through the seed's /registrations/
    # API is named after approval (appservice/domain/seed_registrations.py).
    localpart: str | None
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

    def user_id(self, domain: str) -> str | None:
        """The account's Matrix ID once it exists, else the one asked for (None: no name
        asked for yet)."""
        if self.matrix_user_id:
            return self.matrix_user_id
        return None if self.localpart is None else user_id(self.localpart, domain)

    def shown_user_id(self, domain: str, no_name: str) -> str:
        """user_id() for people to read: `no_name` stands for a name not chosen yet."""
        return self.user_id(domain) or no_name


@dataclass(frozen=True)
class NewRequest:
    localpart: str | None  # None: the name is chosen after approval
    email: str
    language: str
    reason: str
    password_hash: str  # "" while no password is set (registration.password: after_approval)
    password_encrypted: str | None
    invite_id: str | None = None

    @property
    def invited_by(self) -> str | None:
        return f"invite {self.invite_id}" if self.invite_id else None


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
