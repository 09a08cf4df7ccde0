"""The other seed's registration API (`/registrations/`, appservice/web/seed_api.py) on
Gatekeeper's one state machine.

A request made here starts with an email alone: it has no name (its `localpart` is NULL)
until its applicant, once approved, chooses one with the PATCH. Every state change goes
through `Registrations`, the decisions through `Decisions`; the confirmation and decision
mails are the sign-up's.

The account is made with a password that Gatekeeper generates and hands out once, in the
PATCH's answer: it is never stored, not even encrypted. So the PATCH creates the account
itself, at once, with the transitions the provisioner makes (START_PROVISIONING, then
FINISH_PROVISIONING or FAIL_PROVISIONING), and the name goes in with START_PROVISIONING,
in one compare-and-set: the provisioner never claims a request without a name
(`RegistrationStore.next_due_for_provisioning`), so it cannot make the account without the
password in between; nor does it take the running creation for an interrupted round of
its own (`seed_registration.creating_until`, a lease). Should the process die in between,
the provisioner resumes the named request once the lease is over, like any interrupted
round: the account is then made without a password and the welcome mail's link sets one.

Two tokens open a request (HTTP Basic `rid:token`): the manager's, which is the admin
API's token (`web.admin_api_token`), and the requester's own, shown once in the POST's
answer and kept as a SHA-256 in `seed_registration` (migration 011).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.errors import FieldErrors, SignUpRefused, SignUpsClosed
from gatekeeper.appservice.domain.registration_request import (
    NewRequest,
    RegistrationRequest,
    State,
    new_request_id,
)
from gatekeeper.appservice.domain.registrations import (
    UNIQUE_VIOLATIONS,
    EmailInUse,
    Registrations,
    Result,
    Transition,
)
from gatekeeper.appservice.domain.signup import SignUps, valid_email
from gatekeeper.appservice.homeserver.account_backend import (
    AccountBackend,
    AccountTaken,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.storage.database import Database
from gatekeeper.appservice.storage.ratelimit import address_key
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.seed_registrations")

# How long the provisioner leaves a PATCH's account creation alone (far beyond the
# backend's timeouts): after that, it resumes the request as an interrupted round.
CREATION_LEASE_MS = 5 * 60_000
# Who the audit and the room's notice name for a decision made here.
MANAGER_ACTOR = "registrations-api"

# The seed's words (status, matrix_status) for each of Gatekeeper's states, in one place.
# An unconfirmed request is still pending for the seed; one that ended without an account
# (expired, withdrawn) is as good as rejected; a deactivated account was made.
SEED_STATUS: dict[State, tuple[str, str]] = {
    State.UNVERIFIED: ("pending", "pending"),
    State.PENDING: ("pending", "pending"),
    State.APPROVED: ("approved", "pending"),
    State.PROVISIONING: ("approved", "processing"),
    State.ACTIVE: ("approved", "success"),
    State.FAILED: ("approved", "failed"),
    State.REJECTED: ("rejected", "pending"),
    State.EXPIRED: ("rejected", "pending"),
    State.WITHDRAWN: ("rejected", "pending"),
    State.DEACTIVATED: ("approved", "success"),
}
DECISIONS = ("approved", "rejected")


class Caller(enum.Enum):
    MANAGER = "manager"
    USER = "user"


class WrongState(Exception):
    """The request's state does not allow this (not approved yet, named already, …)."""

    def __init__(self, request: RegistrationRequest) -> None:
        super().__init__(f"the request is {request.state}")
        self.request = request


@dataclass(frozen=True)
class Created:
    """The POST's answer: the request (None when the email was someone else's: nothing
    was stored, and the answer looks the same) and the requester's token."""

    rid: str
    token: str
    email: str
    request: RegistrationRequest | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class SeedRegistrations:
    def __init__(
        self,
        config: Config,
        db: Database,
        registrations: Registrations,
        store: RegistrationStore,
        signups: SignUps,
        decisions: Decisions,
        backend: AccountBackend,
        mail: ApplicantMail,
    ) -> None:
        self.config = config
        self.db = db
        self.registrations = registrations
        self.store = store
        self.signups = signups
        self.decisions = decisions
        self.backend = backend
        self.mail = mail

    async def create(self, email: str, address: str) -> Created:
        """A request for `email`, with no name yet; its confirmation mail as a sign-up's."""
        # As the sign-up: the closed gate (from memory) before the counted hit.
        reason = await self.signups.gate.closed_reason()
        if reason is not None:
            raise SignUpsClosed(reason)
        await self.signups.limiter.hit(address_key("signup", address), self.signups.limit)
        email = valid_email(email, "email")
        await self._refuse_blocked(None, email, address)
        token = secrets.token_urlsafe(32)
        confirmed = not self.config.registration.require_email_confirmation
        new = NewRequest(
            localpart=None,
            email=email,
            language=self.config.registration.languages[0],
            reason="",
            password_hash="",
            password_encrypted=None,
        )

        async def after(conn: LoggingConnection, request: RegistrationRequest) -> None:
            await conn.execute(
                "INSERT INTO seed_registration (request_id, token_hash) VALUES ($1, $2)",
                request.id,
                token_hash(token),
            )
            if not confirmed:
                await self.mail.confirmation(conn, request)

        try:
            request = await self.registrations.create(new, confirmed=confirmed, after=after)
        except EmailInUse as in_use:
            # As the sign-up: the owner hears of it, the caller learns nothing.
            unnamed = f"@…:{self.config.homeserver.domain}"
            await self.signups.tell_email_owner(in_use.holder, email, unnamed)
            return Created(new_request_id(), token, email, None)
        if not confirmed:
            await self.signups.limiter.recipient_may_get_mail(email)
        self.mail.mailer.wake()
        await self.signups.gate.apply_daily_cap()
        return Created(request.id, token, email, request)

    async def _refuse_blocked(self, localpart: str | None, email: str, address: str) -> None:
        """The gate's blocks and email domain lists, as for a sign-up (a name block only
        once there is a name)."""
        refusal = await self.signups.gate.refusal(localpart, email, address)
        if refusal is None:
            return
        if self.config.registration.tell_room_about_blocked:
            name = f"@{localpart}:{self.config.homeserver.domain}" if localpart else "no name yet"
            self.signups.gate.refusal_notes.refused(
                refusal, f"Refused a sign-up through /registrations/ ({name}): {refusal.why}."
            )
        raise SignUpRefused(refusal.why)

    async def find(self, rid: str) -> RegistrationRequest | None:
        """A request made through this API (others have no user token and are not its)."""
        known = await self.db.fetchval(
            "SELECT request_id FROM seed_registration WHERE request_id=$1", rid
        )
        return None if known is None else await self.store.get(rid)

    async def caller(self, rid: str, token: str) -> Caller | None:
        """Whose token this is for request `rid`, None if nobody's."""
        manager = self.config.web.admin_api_token
        given = token.encode("utf-8", "surrogateescape")
        if manager is not None and hmac.compare_digest(given, manager.get_secret_value().encode()):
            return Caller.MANAGER
        stored = await self.db.fetchval(
            "SELECT token_hash FROM seed_registration WHERE request_id=$1", rid
        )
        if stored is not None and hmac.compare_digest(str(stored), token_hash(token)):
            return Caller.USER
        return None

    async def decide(self, rid: str, status: object) -> Result:
        """The manager's decision: approve or reject, as the admins would."""
        if status == "approved":
            return await self.decisions.approve(rid, MANAGER_ACTOR)
        if status == "rejected":
            return await self.decisions.reject(rid, MANAGER_ACTOR, None)
        raise FieldErrors({"status": "must be approved or rejected"})

    async def name_and_create(
        self, request: RegistrationRequest, username: str, email: str | None, address: str
    ) -> tuple[RegistrationRequest, str | None]:
        """Name an approved request and make its account now; the request and the
        generated password (None when the account could not be made)."""
        if request.state is not State.APPROVED or request.localpart is not None:
            raise WrongState(request)
        if email is not None and email.strip().lower() != request.email.lower():
            raise FieldErrors({"email": "is not this registration's email"})
        localpart = username.strip().lower()
        problem = await self.signups.name_problem(localpart) if localpart else "is required"
        if problem:
            raise FieldErrors({"username": problem})
        await self._refuse_blocked(localpart, request.email, address)

        async def hold(conn: LoggingConnection, started: RegistrationRequest) -> None:
            await conn.execute(
                "UPDATE seed_registration SET creating_until=$2 WHERE request_id=$1",
                started.id,
                now_ms() + CREATION_LEASE_MS,
            )

        try:
            started = await self.registrations.apply(
                request.id,
                Transition.START_PROVISIONING,
                "applicant",
                extra={
                    "localpart": localpart,
                    "provision_attempts": request.provision_attempts + 1,
                },
                after=hold,
            )
        except UNIQUE_VIOLATIONS:
            # Another request took the name since the check.
            raise FieldErrors({"username": "is already taken"}) from None
        if not started.changed or started.request is None:
            raise WrongState(started.request or request)
        password = secrets.token_urlsafe(18)
        try:
            user_id = await self.backend.create_account(
                NewAccount(
                    localpart,
                    password,
                    displayname=localpart,
                    email=request.email,
                    approved_at_ms=request.decided_at or request.created_at,
                )
            )
        except AccountTaken:
            failed = await self.registrations.fail_provisioning(
                request.id, "the name was taken on the homeserver in the meantime"
            )
            return failed.request or started.request, None
        except (HomeserverUnavailable, ProvisioningRefused) as error:
            # No retry later: the password it would need is gone with this answer.
            failed = await self.registrations.fail_provisioning(request.id, str(error))
            return failed.request or started.request, None
        finished = await self.registrations.finish_provisioning(
            request.id, user_id, after=self.mail.welcome
        )
        log.info("Created %s for request %s (registrations API)", user_id, request.id)
        return finished.request or started.request, password

    async def withdraw_and_erase(self, request: RegistrationRequest) -> None:
        """The requester withdraws, as on the status page: its personal data goes at once
        (Registrations.withdraw). Its token goes after it: a token that opens nothing more."""
        result = await self.registrations.withdraw(request.id)
        if not result.changed:
            raise WrongState(result.request or request)
        await self.db.execute("DELETE FROM seed_registration WHERE request_id=$1", request.id)
