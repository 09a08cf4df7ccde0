"""The registration state machine on SQLite and PostgreSQL, without Synapse.

Every transition from every state, what each named transition writes, which requests
hold a name and an email, who hears of a change, and two transitions of one request at
once. The expected table below is the design's (docs/architecture.md, "A request's
states"), written out here rather than read from `Transition`, so a change to the code's
table shows up as a failing cell.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from mautrix.util.async_db import Database, Scheme
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import (
    AuditEntry,
    NewRequest,
    RegistrationRequest,
    State,
    initial_state,
)
from gatekeeper.appservice.domain.registrations import (
    EmailInUse,
    NameAlreadyRequested,
    Outcome,
    Registrations,
    Transition,
)
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.mail_tokens import CONFIRM_PURPOSE, STATUS_PURPOSE, MailTokens
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.timeutil import now_ms

U, P, A = State.UNVERIFIED, State.PENDING, State.APPROVED
# Each transition's allowed sources and its target, as the design draws them.
ALLOWED: dict[Transition, tuple[set[State], State]] = {
    Transition.CONFIRM_EMAIL: ({U}, P),
    Transition.CONFIRM_INVITED: ({U}, A),
    Transition.APPROVE: ({P}, A),
    Transition.REJECT: ({P}, State.REJECTED),
    Transition.EXPIRE: ({U, P}, State.EXPIRED),
    Transition.WITHDRAW: ({U, P}, State.WITHDRAWN),
    Transition.START_PROVISIONING: ({A}, State.PROVISIONING),
    Transition.RETRY_PROVISIONING: ({State.PROVISIONING}, A),
    Transition.FINISH_PROVISIONING: ({State.PROVISIONING}, State.ACTIVE),
    Transition.FAIL_PROVISIONING: ({State.PROVISIONING}, State.FAILED),
    Transition.DEACTIVATE: ({State.ACTIVE}, State.DEACTIVATED),
}
# How a new request gets to each state: confirmed at sign-up?, then these transitions.
ROUTE: dict[State, tuple[bool, tuple[Transition, ...]]] = {
    State.UNVERIFIED: (False, ()),
    State.PENDING: (True, ()),
    State.APPROVED: (True, (Transition.APPROVE,)),
    State.PROVISIONING: (True, (Transition.APPROVE, Transition.START_PROVISIONING)),
    State.ACTIVE: (
        True,
        (Transition.APPROVE, Transition.START_PROVISIONING, Transition.FINISH_PROVISIONING),
    ),
    State.FAILED: (
        True,
        (Transition.APPROVE, Transition.START_PROVISIONING, Transition.FAIL_PROVISIONING),
    ),
    State.REJECTED: (True, (Transition.REJECT,)),
    State.EXPIRED: (True, (Transition.EXPIRE,)),
    State.WITHDRAWN: (True, (Transition.WITHDRAW,)),
    State.DEACTIVATED: (
        True,
        (
            Transition.APPROVE,
            Transition.START_PROVISIONING,
            Transition.FINISH_PROVISIONING,
            Transition.DEACTIVATE,
        ),
    ),
}
# A request in these states keeps its name and its email from anyone else.
HOLDING = {
    State.UNVERIFIED,
    State.PENDING,
    State.APPROVED,
    State.PROVISIONING,
    State.ACTIVE,
    State.FAILED,
    State.DEACTIVATED,
}


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def store(db: Database) -> RegistrationStore:
    return RegistrationStore(db)


@pytest.fixture
async def tokens(db: Database) -> MailTokens:
    return MailTokens(db)


@pytest.fixture
async def registrations(store: RegistrationStore) -> Registrations:
    return Registrations(store)


def new_request(tag: str = "", invite_id: str | None = None) -> NewRequest:
    """A sign-up with a name and an email nobody else in the database has."""
    name = f"{tag or 'user'}-{secrets.token_hex(4)}"
    return NewRequest(
        localpart=name,
        email=f"{name}@example.org",
        language="en",
        reason="testing",
        password_hash="argon2-hash",
        password_encrypted="fernet-ciphertext",
        invite_id=invite_id,
    )


async def take(
    registrations: Registrations, request_id: str, transition: Transition
) -> RegistrationRequest:
    """Take `transition` the way Gatekeeper does, by the method named after it."""
    if transition is Transition.APPROVE:
        result = await registrations.approve(request_id, "setup")
    elif transition is Transition.REJECT:
        result = await registrations.reject(request_id, "setup", None)
    elif transition is Transition.WITHDRAW:
        result = await registrations.withdraw(request_id, "setup")
    elif transition is Transition.EXPIRE:
        results = await registrations.expire_older_than(now_ms() + 1)
        [result] = [r for r in results if r.request and r.request.id == request_id]
    elif transition is Transition.START_PROVISIONING:
        # claim_for_provisioning() takes whichever request is due, perhaps not this one.
        # A claim is this transition plus the attempt count.
        result = await registrations.apply(request_id, transition, "setup")
    elif transition is Transition.FINISH_PROVISIONING:
        result = await registrations.finish_provisioning(request_id, "@new:example.org")
    elif transition is Transition.FAIL_PROVISIONING:
        result = await registrations.fail_provisioning(request_id, "setup")
    elif transition is Transition.DEACTIVATE:
        result = await registrations.deactivate(request_id, "setup", None)
    else:
        raise AssertionError(f"no route takes {transition}")
    assert result.outcome is Outcome.CHANGED, (transition, result)
    assert result.request is not None
    return result.request


async def request_in(registrations: Registrations, state: State) -> RegistrationRequest:
    """A new request brought to `state` by transitions of an actor named 'setup'."""
    confirmed, route = ROUTE[state]
    request = await registrations.create(new_request(state.value), confirmed=confirmed)
    for transition in route:
        request = await take(registrations, request.id, transition)
    assert request.state is state
    return request


async def stored(store: RegistrationStore, request_id: str) -> RegistrationRequest:
    request = await store.get(request_id)
    assert request is not None
    return request


async def new_invite(db: Database) -> str:
    invite_id = secrets.token_hex(4)
    await db.execute(
        "INSERT INTO invite (id, token_hash, created_by, created_at, uses_left)"
        " VALUES ($1, $2, '@alice:example.org', $3, 1)",
        invite_id,
        secrets.token_hex(16),
        now_ms(),
    )
    return invite_id


async def invited_request(
    registrations: Registrations, db: Database, *, confirmed: bool
) -> tuple[str, RegistrationRequest]:
    """A new invite, and a new request made with it: the invite's ID and the request."""
    invite_id = await new_invite(db)
    return invite_id, await registrations.create(
        new_request(invite_id=invite_id), confirmed=confirmed
    )


async def audit_rows(
    store: RegistrationStore, request_id: str
) -> list[tuple[str, str | None, str, str | None]]:
    """The request's audit rows as (actor, from, to, reason). Rows written in the same
    millisecond may come in any order, so tests look rows up rather than take the last."""
    return [(e.actor, e.from_state, e.to_state, e.reason) for e in await store.history(request_id)]


def new_audit_rows(
    history: list[AuditEntry], before: list[AuditEntry]
) -> list[tuple[str, str | None, str, str | None]]:
    """The audit rows written since `before` was read: (actor, from, to, reason)."""
    return [(e.actor, e.from_state, e.to_state, e.reason) for e in history if e not in before]


async def issue(
    tokens: MailTokens,
    request_id: str,
    purpose: str = CONFIRM_PURPOSE,
    valid_ms: int = 60_000,
) -> str:
    async with transaction(tokens.db) as conn:
        return await tokens.issue_token(conn, request_id, purpose, valid_ms)


# --- every transition from every state --------------------------------------------------


def test_the_table_covers_every_transition_and_state() -> None:
    assert set(ALLOWED) == set(Transition)
    assert set(ROUTE) == set(State)


@pytest.mark.parametrize("source", list(State), ids=lambda s: s.value)
@pytest.mark.parametrize("transition", list(Transition), ids=lambda t: t.name.lower())
async def test_transition_from_every_state(
    registrations: Registrations, store: RegistrationStore, transition: Transition, source: State
) -> None:
    request = await request_in(registrations, source)
    before = await store.history(request.id)
    sources, target = ALLOWED[transition]

    result = await registrations.apply(request.id, transition, "tester", "a reason")

    now = await stored(store, request.id)
    history = await store.history(request.id)
    if source in sources:
        assert result.outcome is Outcome.CHANGED
        assert result.changed
        assert result.request == now
        assert now.state is target
        assert new_audit_rows(history, before) == [
            ("tester", source.value, target.value, "a reason")
        ]
        assert len(history) == len(before) + 1
    else:
        expected = Outcome.ALREADY if source is target else Outcome.REFUSED
        assert result.outcome is expected
        assert not result.changed
        assert result.request == request == now
        assert history == before


@pytest.mark.parametrize("transition", list(Transition), ids=lambda t: t.name.lower())
async def test_unknown_request_is_not_found(
    registrations: Registrations, store: RegistrationStore, transition: Transition
) -> None:
    result = await registrations.apply("nosuchid", transition, "tester")
    assert (result.outcome, result.request) == (Outcome.NOT_FOUND, None)
    assert await store.history("nosuchid") == []


async def test_named_transitions_of_an_unknown_request_are_not_found(
    registrations: Registrations,
) -> None:
    results = [
        await registrations.approve("nosuchid", "@alice:example.org"),
        await registrations.reject("nosuchid", "@alice:example.org", "spam"),
        await registrations.withdraw("nosuchid"),
        await registrations.retry_provisioning("nosuchid", "down", now_ms()),
        await registrations.fail_provisioning("nosuchid", "refused"),
        await registrations.finish_provisioning("nosuchid", "@x:example.org"),
        await registrations.deactivate("nosuchid", "@alice:example.org", None),
        await registrations.confirm_email("no-such-token"),
    ]
    assert [(r.outcome, r.request) for r in results] == [(Outcome.NOT_FOUND, None)] * len(results)


async def test_request_ids_are_read_as_typed(
    registrations: Registrations, store: RegistrationStore
) -> None:
    """IDs are read aloud and typed: spaces around and capitals do not matter."""
    request = await request_in(registrations, State.PENDING)
    result = await registrations.approve(f"  {request.id.upper()} ", "@alice:example.org")
    assert result.outcome is Outcome.CHANGED
    assert (await stored(store, request.id)).state is State.APPROVED


# --- creating --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confirmed", "invited", "state"),
    [
        (False, False, State.UNVERIFIED),
        (False, True, State.UNVERIFIED),
        (True, False, State.PENDING),
        (True, True, State.APPROVED),
    ],
)
def test_initial_state(confirmed: bool, invited: bool, state: State) -> None:
    assert initial_state(confirmed, invited) is state


async def test_create_unverified(registrations: Registrations, store: RegistrationStore) -> None:
    new = new_request()
    request = await registrations.create(new, confirmed=False)
    assert request == await store.get(request.id)
    assert (request.state, request.email_verified) == (State.UNVERIFIED, False)
    assert (request.localpart, request.email, request.reason) == (
        new.localpart,
        new.email,
        "testing",
    )
    assert (request.decided_by, request.decided_at, request.provision_attempts) == (None, None, 0)
    [entry] = await store.history(request.id)
    assert (entry.actor, entry.from_state, entry.to_state) == ("applicant", None, "unverified")


async def test_create_confirmed(registrations: Registrations, store: RegistrationStore) -> None:
    request = await registrations.create(new_request(), confirmed=True)
    assert (request.state, request.email_verified, request.decided_by) == (
        State.PENDING,
        True,
        None,
    )
    [entry] = await store.history(request.id)
    assert (entry.actor, entry.from_state, entry.to_state) == ("applicant", None, "pending")


async def test_create_invited_and_confirmed_is_approved_by_the_invite(
    registrations: Registrations, store: RegistrationStore, db: Database
) -> None:
    invite_id, request = await invited_request(registrations, db, confirmed=True)
    assert request.state is State.APPROVED
    assert request.decided_by == f"invite {invite_id}"
    assert request.decided_at is not None
    assert request.next_attempt_at is not None
    assert request.next_attempt_at <= now_ms()
    [entry] = await store.history(request.id)
    assert (entry.actor, entry.from_state, entry.to_state) == (
        f"invite {invite_id}",
        None,
        "approved",
    )


async def test_create_invited_waits_for_the_email_first(
    registrations: Registrations, db: Database
) -> None:
    invite_id, request = await invited_request(registrations, db, confirmed=False)
    assert (request.state, request.decided_by, request.invite_id) == (
        State.UNVERIFIED,
        None,
        invite_id,
    )


# --- confirming the email --------------------------------------------------------------


async def test_confirm_email_once(
    registrations: Registrations, store: RegistrationStore, tokens: MailTokens
) -> None:
    request = await request_in(registrations, State.UNVERIFIED)
    token = await issue(tokens, request.id)

    first = await registrations.confirm_email(token)
    assert first.outcome is Outcome.CHANGED
    now = await stored(store, request.id)
    assert first.request == now
    assert (now.state, now.email_verified) == (State.PENDING, True)

    again = await registrations.confirm_email(token)
    assert (again.outcome, again.request) == (Outcome.ALREADY, now)
    assert [e.to_state for e in await store.history(request.id)] == [
        "unverified",
        "pending",
    ]


async def test_confirm_email_of_an_invited_request_approves_it(
    registrations: Registrations, store: RegistrationStore, tokens: MailTokens, db: Database
) -> None:
    invite_id, request = await invited_request(registrations, db, confirmed=False)
    result = await registrations.confirm_email(await issue(tokens, request.id))
    assert result.outcome is Outcome.CHANGED
    now = await stored(store, request.id)
    assert (now.state, now.email_verified, now.decided_by) == (
        State.APPROVED,
        True,
        f"invite {invite_id}",
    )
    assert now.next_attempt_at is not None
    assert now.next_attempt_at <= now_ms()


async def test_confirm_email_with_a_bad_token_changes_nothing(
    registrations: Registrations,
    store: RegistrationStore,
    tokens: MailTokens,
) -> None:
    request = await request_in(registrations, State.UNVERIFIED)
    expired = await issue(tokens, request.id, valid_ms=-1)
    other_purpose = await issue(tokens, request.id, purpose=STATUS_PURPOSE)
    for token in (expired, other_purpose, "made-up"):
        result = await registrations.confirm_email(token)
        assert (result.outcome, result.request) == (Outcome.NOT_FOUND, None)
    assert (await stored(store, request.id)).state is State.UNVERIFIED


async def test_confirm_email_of_a_withdrawn_request_is_refused(
    registrations: Registrations,
    store: RegistrationStore,
    tokens: MailTokens,
) -> None:
    request = await request_in(registrations, State.UNVERIFIED)
    token = await issue(tokens, request.id)
    await registrations.withdraw(request.id)
    result = await registrations.confirm_email(token)
    assert result.outcome is Outcome.REFUSED
    now = await stored(store, request.id)
    assert (now.state, now.email_verified) == (State.WITHDRAWN, False)


# --- what each named transition writes ------------------------------------------------


async def test_approve_records_who_and_when_once(
    registrations: Registrations, store: RegistrationStore
) -> None:
    request = await request_in(registrations, State.PENDING)
    before = now_ms()
    result = await registrations.approve(request.id, "@alice:example.org")
    assert result.outcome is Outcome.CHANGED
    approved = await stored(store, request.id)
    assert approved.state is State.APPROVED
    assert approved.decided_by == "@alice:example.org"
    assert approved.decided_at is not None
    assert before <= approved.decided_at <= now_ms()
    assert approved.next_attempt_at is not None
    assert approved.next_attempt_at <= now_ms()

    again = await registrations.approve(request.id, "@bob:example.org")
    assert again.outcome is Outcome.ALREADY
    assert await stored(store, request.id) == approved
    assert len(await store.history(request.id)) == 2


async def test_reject_keeps_the_reason_and_drops_the_password(
    registrations: Registrations,
    store: RegistrationStore,
) -> None:
    request = await request_in(registrations, State.PENDING)
    told: list[tuple[State, str | None]] = []

    async def after(conn: LoggingConnection, rejected: RegistrationRequest) -> None:
        told.append((rejected.state, rejected.decision_reason))

    result = await registrations.reject(request.id, "@alice:example.org", "spam", after)
    assert result.outcome is Outcome.CHANGED
    rejected = await stored(store, request.id)
    assert (rejected.state, rejected.decided_by, rejected.decision_reason) == (
        State.REJECTED,
        "@alice:example.org",
        "spam",
    )
    assert rejected.decided_at is not None
    assert rejected.password_encrypted is None
    assert rejected.password_hash == "argon2-hash"
    assert told == [(State.REJECTED, "spam")]
    assert ("@alice:example.org", "pending", "rejected", "spam") in await audit_rows(
        store, request.id
    )

    assert (await registrations.reject(request.id, "@bob:example.org", "again", after)).outcome is (
        Outcome.ALREADY
    )
    assert told == [(State.REJECTED, "spam")]
    assert (await stored(store, request.id)).decision_reason == "spam"


@pytest.mark.parametrize("source", [State.UNVERIFIED, State.PENDING], ids=lambda s: s.value)
async def test_withdraw_drops_the_password(
    registrations: Registrations, store: RegistrationStore, source: State
) -> None:
    request = await request_in(registrations, source)
    result = await registrations.withdraw(request.id)
    assert result.outcome is Outcome.CHANGED
    withdrawn = await stored(store, request.id)
    assert (withdrawn.state, withdrawn.password_encrypted) == (State.WITHDRAWN, None)
    assert ("applicant", source.value, "withdrawn", None) in await audit_rows(store, request.id)


async def test_provisioning_outcomes_are_written(
    registrations: Registrations, store: RegistrationStore
) -> None:
    retried = await request_in(registrations, State.PROVISIONING)
    at = now_ms() + 60_000
    assert (await registrations.retry_provisioning(retried.id, "down", at)).changed
    retried = await stored(store, retried.id)
    assert (retried.state, retried.last_error, retried.next_attempt_at) == (
        State.APPROVED,
        "down",
        at,
    )
    assert retried.password_encrypted == "fernet-ciphertext"  # still needed for the next try

    failed = await request_in(registrations, State.PROVISIONING)
    assert (await registrations.fail_provisioning(failed.id, "refused")).changed
    failed = await stored(store, failed.id)
    assert (failed.state, failed.last_error, failed.password_encrypted) == (
        State.FAILED,
        "refused",
        None,
    )
    assert ("gatekeeper", "provisioning", "failed", "refused") in await audit_rows(store, failed.id)

    finished = await request_in(registrations, State.PROVISIONING)
    await registrations.retry_provisioning(finished.id, "down", now_ms())
    await registrations.apply(finished.id, Transition.START_PROVISIONING, "setup")
    welcomed: list[str | None] = []

    async def after(conn: LoggingConnection, request: RegistrationRequest) -> None:
        welcomed.append(request.matrix_user_id)

    user_id = f"@{finished.localpart}:example.org"
    assert (await registrations.finish_provisioning(finished.id, user_id, after)).changed
    finished = await stored(store, finished.id)
    assert (finished.state, finished.matrix_user_id, finished.last_error) == (
        State.ACTIVE,
        user_id,
        None,
    )
    assert finished.password_encrypted is None
    assert finished.user_id("other.example") == user_id
    assert welcomed == [user_id]


# --- passwords and notices -------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "to_come"),
    [
        (State.UNVERIFIED, True),
        (State.PENDING, True),
        (State.APPROVED, True),
        (State.PROVISIONING, False),
        (State.ACTIVE, False),
        (State.FAILED, False),
        (State.REJECTED, False),
        (State.WITHDRAWN, False),
    ],
    ids=lambda value: value.value if isinstance(value, State) else str(value),
)
async def test_set_password_reaches_the_account_only_before_it_is_made(
    registrations: Registrations, store: RegistrationStore, state: State, to_come: bool
) -> None:
    request = await request_in(registrations, state)
    assert await store.set_password(request.id, "new-hash", "new-ciphertext") is to_come
    now = await stored(store, request.id)
    assert now.password_hash == "new-hash"
    assert now.password_encrypted == ("new-ciphertext" if to_come else request.password_encrypted)
    assert now.state is state


async def test_notices_behind_follow_the_state(
    registrations: Registrations, store: RegistrationStore
) -> None:
    unverified = await request_in(registrations, State.UNVERIFIED)
    request = await request_in(registrations, State.PENDING)

    async def behind() -> list[str]:
        return [r.id for r in await store.notices_behind()]

    assert await behind() == [request.id]  # an unverified request is not shown to admins
    await store.record_notice(request.id, "$notice", State.PENDING)
    assert await behind() == []
    assert (await store.by_notice("$notice")) == await store.get(request.id)

    await registrations.approve(request.id, "@alice:example.org")
    assert await behind() == [request.id]
    await store.record_notice(request.id, "$notice", State.APPROVED)
    assert await behind() == []

    # Queued and running account creations look alike in a notice.
    await registrations.claim_for_provisioning()
    assert await behind() == []
    await registrations.finish_provisioning(request.id, "@x:example.org")
    assert await behind() == [request.id]
    await store.record_notice(request.id, "$notice", State.ACTIVE)
    assert await behind() == []
    await registrations.deactivate(request.id, "@alice:example.org", None)
    assert await behind() == [request.id]
    await store.record_notice(request.id, "$notice", State.DEACTIVATED)
    assert await behind() == []
    assert unverified.id not in await behind()


async def test_an_invited_approved_request_needs_a_notice(
    registrations: Registrations, store: RegistrationStore, db: Database
) -> None:
    request = await registrations.create(
        new_request(invite_id=await new_invite(db)), confirmed=True
    )
    assert [r.id for r in await store.notices_behind()] == [request.id]


# --- names and emails held by requests --------------------------------------------------


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
async def test_name_is_held_while_the_request_lives(
    registrations: Registrations, store: RegistrationStore, state: State
) -> None:
    request = await request_in(registrations, state)
    assert request.localpart is not None
    same_name = replace(new_request(), localpart=request.localpart)
    assert await store.name_requested(request.localpart) is (state in HOLDING)
    if state in HOLDING:
        with pytest.raises(NameAlreadyRequested):
            await registrations.create(same_name, confirmed=True)
    else:
        assert (await registrations.create(same_name, confirmed=True)).state is State.PENDING


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
async def test_email_is_held_while_the_request_lives(
    registrations: Registrations, store: RegistrationStore, state: State
) -> None:
    request = await request_in(registrations, state)
    same_email = replace(new_request(), email=request.email.upper())
    holder = await store.holder_of_email(f" {request.email.upper()} ")
    assert (holder.id if holder else None) == (request.id if state in HOLDING else None)
    if state in HOLDING:
        with pytest.raises(EmailInUse) as raised:
            await registrations.create(same_email, confirmed=True)
        assert raised.value.holder is not None
        assert raised.value.holder.id == request.id
    else:
        assert (await registrations.create(same_email, confirmed=True)).state is State.PENDING


async def test_two_sign_ups_for_one_name_at_once(registrations: Registrations) -> None:
    first, second = new_request(), new_request()
    second = replace(second, localpart=first.localpart)
    outcomes = await asyncio.gather(
        registrations.create(first, confirmed=True),
        registrations.create(second, confirmed=True),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == [
        "NameAlreadyRequested",
        "RegistrationRequest",
    ]


async def test_two_sign_ups_for_one_email_at_once(registrations: Registrations) -> None:
    first, second = new_request(), new_request()
    second = replace(second, email=first.email.upper())
    outcomes = await asyncio.gather(
        registrations.create(first, confirmed=True),
        registrations.create(second, confirmed=True),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["EmailInUse", "RegistrationRequest"]


# --- on_change: who hears of committed changes ----------------------------------------


async def test_on_change_hears_only_committed_changes(store: RegistrationStore) -> None:
    heard: list[tuple[str, State]] = []
    registrations = Registrations(
        store, on_change=lambda request: heard.append((request.id, request.state))
    )

    request = await registrations.create(new_request(), confirmed=True)
    assert heard == [(request.id, State.PENDING)]
    await registrations.approve(request.id, "@alice:example.org")
    assert heard[-1] == (request.id, State.APPROVED)
    heard.clear()

    await registrations.approve(request.id, "@alice:example.org")  # already
    await registrations.reject(request.id, "@alice:example.org", "no")  # refused
    await registrations.withdraw("nosuchid")  # not found
    assert heard == []


async def test_a_failing_consequence_undoes_the_transition(
    registrations: Registrations, store: RegistrationStore
) -> None:
    request = await request_in(registrations, State.PENDING)
    heard: list[RegistrationRequest] = []
    registrations = Registrations(store, on_change=heard.append)
    history = await store.history(request.id)

    async def mail_fails(conn: LoggingConnection, rejected: RegistrationRequest) -> None:
        raise OSError("the outbox is gone")

    with pytest.raises(OSError, match="outbox"):
        await registrations.reject(request.id, "@alice:example.org", "spam", mail_fails)
    assert await stored(store, request.id) == request
    assert await store.history(request.id) == history
    assert heard == []

    new = new_request()
    assert new.localpart is not None
    with pytest.raises(OSError, match="outbox"):
        await registrations.create(new, confirmed=False, after=mail_fails)
    assert not await store.name_requested(new.localpart)
    assert await store.holder_of_email(new.email) is None
    assert heard == []


# --- two transitions of one request at once --------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
async def test_approve_and_reject_at_once_one_wins(
    registrations: Registrations, store: RegistrationStore, attempt: int
) -> None:
    heard: list[State] = []
    request = await request_in(registrations, State.PENDING)
    registrations = Registrations(store, on_change=lambda changed: heard.append(changed.state))
    history = await store.history(request.id)

    approved, rejected = await asyncio.gather(
        registrations.approve(request.id, "@alice:example.org"),
        registrations.reject(request.id, "@bob:example.org", "spam"),
    )

    assert sorted(r.outcome.value for r in (approved, rejected)) == ["changed", "refused"]
    winner = approved if approved.changed else rejected
    now = await stored(store, request.id)
    assert winner.request == now
    assert now.state in (State.APPROVED, State.REJECTED)
    assert now.decided_by == ("@alice:example.org" if approved.changed else "@bob:example.org")
    new_rows = [e for e in await store.history(request.id) if e not in history]
    assert [(e.from_state, e.to_state) for e in new_rows] == [("pending", now.state.value)]
    assert heard == [now.state]


async def test_the_same_transition_twice_at_once_happens_once(
    registrations: Registrations,
    store: RegistrationStore,
) -> None:
    request = await request_in(registrations, State.PENDING)
    results = await asyncio.gather(
        *(registrations.approve(request.id, f"@admin{i}:example.org") for i in range(3))
    )
    assert sorted(r.outcome.value for r in results) == ["already", "already", "changed"]
    assert len(await store.history(request.id)) == 2


# --- across all requests: expiry and the provisioning queue -----------------------------


async def test_expire_older_than_ends_only_old_open_requests(
    registrations: Registrations, store: RegistrationStore
) -> None:
    old = [
        await request_in(registrations, State.UNVERIFIED),
        await request_in(registrations, State.PENDING),
    ]
    old_approved = await request_in(registrations, State.APPROVED)
    await asyncio.sleep(0.01)
    cutoff = now_ms()
    await asyncio.sleep(0.01)
    young = await request_in(registrations, State.PENDING)

    results = await registrations.expire_older_than(cutoff)

    assert sorted((r.outcome.value, r.request.id if r.request else "") for r in results) == sorted(
        ("changed", request.id) for request in old
    )
    for request in old:
        expired = await stored(store, request.id)
        assert (expired.state, expired.password_encrypted) == (State.EXPIRED, None)
        assert (
            "gatekeeper",
            request.state.value,
            "expired",
            "not decided in time",
        ) in await audit_rows(store, request.id)
    assert (await stored(store, old_approved.id)).state is State.APPROVED
    assert (await stored(store, young.id)).state is State.PENDING
    assert await registrations.expire_older_than(cutoff) == []


async def test_claim_takes_due_requests_oldest_first(
    registrations: Registrations, store: RegistrationStore
) -> None:
    assert await registrations.claim_for_provisioning() is None
    assert await store.next_provisioning_due() is None
    first = await request_in(registrations, State.APPROVED)
    await asyncio.sleep(0.01)
    second = await request_in(registrations, State.APPROVED)
    later = await request_in(registrations, State.PROVISIONING)
    retry_at = now_ms() + 3_600_000
    await registrations.retry_provisioning(later.id, "down", retry_at)
    assert await store.next_provisioning_due() == first.next_attempt_at

    claimed = await registrations.claim_for_provisioning()
    assert claimed is not None
    assert claimed.id == first.id
    assert (claimed.state, claimed.provision_attempts) == (State.PROVISIONING, 1)
    assert claimed == await store.get(first.id)
    claimed = await registrations.claim_for_provisioning()
    assert claimed is not None
    assert claimed.id == second.id
    assert await registrations.claim_for_provisioning() is None  # `later` is not due yet
    assert await store.next_provisioning_due() == retry_at


async def test_two_claims_at_once_take_a_request_once(
    registrations: Registrations, store: RegistrationStore
) -> None:
    request = await request_in(registrations, State.APPROVED)
    claims = await asyncio.gather(*(registrations.claim_for_provisioning() for _ in range(3)))
    taken = [c for c in claims if c is not None]
    assert [c.id for c in taken] == [request.id]
    assert taken[0].provision_attempts == 1
    history = await store.history(request.id)
    assert [e.to_state for e in history].count("provisioning") == 1


async def test_resume_interrupted_requeues_running_rounds(
    registrations: Registrations, store: RegistrationStore
) -> None:
    running = [await request_in(registrations, State.PROVISIONING) for _ in range(2)]
    untouched = await request_in(registrations, State.APPROVED)
    await registrations.retry_provisioning(
        (await request_in(registrations, State.PROVISIONING)).id, "down", now_ms() + 3_600_000
    )

    assert await registrations.resume_interrupted() == 2

    for request in running:
        resumed = await stored(store, request.id)
        assert resumed.state is State.APPROVED
        assert resumed.next_attempt_at is not None
        assert resumed.next_attempt_at <= now_ms()
        assert (
            "gatekeeper",
            "provisioning",
            "approved",
            "interrupted; resumed",
        ) in await audit_rows(store, request.id)
    assert await stored(store, untouched.id) == untouched
    assert await registrations.resume_interrupted() == 0
    claimed = {(await registrations.claim_for_provisioning() or untouched).id for _ in range(3)}
    assert claimed == {r.id for r in running} | {untouched.id}


# --- search (!search) ---------------------------------------------------------------------


async def found(store: RegistrationStore, text: str) -> set[str]:
    return {request.id for request in await store.search(text, limit=100)}


async def test_search_finds_a_piece_of_the_name_email_or_id_in_any_case(
    registrations: Registrations, store: RegistrationStore
) -> None:
    finder = await registrations.create(
        replace(new_request("finder"), email=f"Mixed.Case-{secrets.token_hex(4)}@Example.ORG"),
        confirmed=True,
    )
    other = await registrations.create(new_request("other"), confirmed=True)
    assert finder.localpart is not None
    pieces = {
        "name, its middle in upper case": finder.localpart[2:9].upper(),
        "email, as typed": finder.email[3:15],
        "email, in lower case": finder.email[3:15].lower(),
        "ID, its middle in upper case": finder.id[1:7].upper(),
        "two letters, which no trigram holds": "FI",
    }
    for what, text in pieces.items():
        assert await found(store, text) == {finder.id}, what
    assert await found(store, "0O") == set()
    assert await found(store, "EXAMPLE.") == {finder.id, other.id}


async def test_search_shows_the_newest_first_and_at_most_the_limit(
    registrations: Registrations, store: RegistrationStore
) -> None:
    made = []
    for _ in range(3):
        made.append(await registrations.create(new_request("listed"), confirmed=True))
        await asyncio.sleep(0.002)  # created_at is in milliseconds

    for text in ("listed-", "LI"):
        found_ids = [request.id for request in await store.search(text, limit=2)]
        assert found_ids == [made[2].id, made[1].id], text


async def test_search_ignores_like_wildcards_in_the_text(
    registrations: Registrations, store: RegistrationStore
) -> None:
    request = await registrations.create(new_request("wild"), confirmed=True)
    await registrations.create(new_request("card"), confirmed=True)

    assert await found(store, "w%i_l\\d-") == {request.id}


async def test_search_finds_a_request_without_a_name(
    registrations: Registrations, store: RegistrationStore
) -> None:
    nameless = await registrations.create(
        replace(new_request("nameless"), localpart=None), confirmed=True
    )

    assert await found(store, nameless.email[:12]) == {nameless.id}
    assert await found(store, nameless.id) == {nameless.id}


async def test_search_finds_a_changed_email_by_its_new_address_only(
    registrations: Registrations, store: RegistrationStore
) -> None:
    request = await registrations.create(new_request("mover"), confirmed=True)
    new_email = f"moved-{secrets.token_hex(4)}@example.net"
    await store.set_pending_email(request.id, new_email)

    assert await store.adopt_pending_email(request.id) == request.email
    assert await found(store, new_email) == {request.id}
    assert await found(store, request.email) == set()


async def test_search_forgets_a_deleted_request(
    db: Database, registrations: Registrations, store: RegistrationStore
) -> None:
    kept = await registrations.create(new_request("kept"), confirmed=True)
    gone = await registrations.create(new_request("gone"), confirmed=True)
    async with transaction(db) as conn:
        await conn.execute("DELETE FROM registration_audit WHERE request_id=$1", gone.id)
        await conn.execute("DELETE FROM registration_request WHERE id=$1", gone.id)
    # On SQLite the next request takes the deleted one's rowid.
    fresh = await registrations.create(new_request("fresh"), confirmed=True)

    assert await found(store, gone.id) == set()
    assert await found(store, "gone-") == set()
    assert await found(store, "example.org") == {kept.id, fresh.id}


async def test_search_reads_the_trigram_index(
    db: Database, store: RegistrationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search must not read the whole table (48 ms at 100,000 requests): the plan of the
    query the store runs names the index of migration 013."""
    await db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
        " INSERT INTO registration_request (id, localpart, email, language, password_hash,"
        " status, matrix_status, created_at, updated_at)"
        " SELECT 'bulk' || CAST(i AS TEXT), 'bulk-' || CAST(i AS TEXT),"
        " 'bulk-' || CAST(i AS TEXT) || '@example.org', 'en', '', 'pending', 'pending', i, i"
        " FROM n"
    )
    sqlite = db.scheme == Scheme.SQLITE
    if not sqlite:
        await db.execute("ANALYZE registration_request")
    plans: list[str] = []
    explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "

    def explaining(fetch: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def explained(self: object, query: str, *args: Any, **kwargs: Any) -> Any:
            if query.startswith("SELECT registration_request.*"):
                rows = await fetch(self, explain + query, *args)
                plans.append("\n".join(" ".join(map(str, tuple(row))) for row in rows))
            return await fetch(self, query, *args, **kwargs)

        return explained

    monkeypatch.setattr(LoggingConnection, "fetch", explaining(LoggingConnection.fetch))
    monkeypatch.setattr(type(db), "fetch", explaining(type(db).fetch))

    assert [request.localpart for request in await store.search("BULK-4321")] == ["bulk-4321"]
    if sqlite:
        assert "SCAN registration_search VIRTUAL TABLE INDEX 0:L" in plans[-1]
        assert "SCAN registration_request" not in plans[-1]
    else:
        assert "Bitmap Index Scan on registration_request_search" in plans[-1]
