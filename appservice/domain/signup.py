"""Sign-up: checking what an applicant sent, then storing it with its confirmation mail."""

from __future__ import annotations

import fnmatch
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.antibot import AntiBot
from gatekeeper.appservice.domain.applicant_mail import STATUS_LINK_MS, ApplicantMail
from gatekeeper.appservice.domain.captcha import Captcha
from gatekeeper.appservice.domain.errors import (
    FieldErrors,
    InviteInvalid,
    SignUpRefused,
    SignUpsClosed,
)
from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.domain.passwords import PasswordHasher, password_problem
from gatekeeper.appservice.domain.registration_request import (
    NewRequest,
    RegistrationRequest,
    State,
    initial_state,
)
from gatekeeper.appservice.domain.registrations import (
    EmailInUse,
    NameAlreadyRequested,
    Registrations,
)
from gatekeeper.appservice.homeserver.account_backend import AccountBackend, Availability
from gatekeeper.appservice.matrix_ids import LOCALPART_RE, LOCALPART_RULE, user_id, user_id_fits
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.mail_tokens import STATUS_PURPOSE
from gatekeeper.appservice.storage.ratelimit import Limit, RateLimiter, address_key
from gatekeeper.appservice.storage.registration_store import RegistrationStore

log = logging.getLogger("gatekeeper.signup")

MAX_REASON_CHARS = 2000
# Generous enough for people behind a shared address (NAT, CGNAT); the mail itself is
# limited per recipient (RateLimiter.recipient_may_get_mail).
RESEND_PER_ADDRESS = Limit(10, 3600)


@dataclass(frozen=True)
class SignUpAnswer:
    """What the applicant is told: the same whether a request was stored or the email
    already belonged to someone (so the answer tells nobody whether it is in use)."""

    state: State
    localpart: str
    email: str
    # For the page after sign-up, never the JSON API: a status token, so that whoever
    # mistyped the address can withdraw the request that holds the name and start again.
    # Random (valid for nothing) when nothing was stored, so the page looks the same.
    status_token: str

    def user_id(self, domain: str) -> str:
        return user_id(self.localpart, domain)


@dataclass(frozen=True)
class SignUpForm:
    localpart: str
    email: str
    language: str
    password: str | None  # None: registration.password is after_approval
    reason: str


def valid_email(value: str, field: str) -> str:
    """The normalised address (no DNS lookup: the machine may have no network)."""
    try:
        return str(validate_email(value.strip(), check_deliverability=False).normalized)
    except EmailNotValidError:
        raise FieldErrors({field: "is not a valid email address"}) from None


def _text(body: dict[str, Any], key: str, errors: dict[str, str], required: bool = True) -> str:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        # Only spaces is no answer either: stripped later, it would pass as "".
        if required:
            errors[key] = "is required"
        return ""
    if not isinstance(value, str):
        errors[key] = "must be a string"
        return ""
    return value


class SignUps:
    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        store: RegistrationStore,
        backend: AccountBackend,
        hasher: PasswordHasher,
        box: SecretBox,
        mail: ApplicantMail,
        limiter: RateLimiter,
        gate: Gate,
        antibot: AntiBot,
        captcha: Captcha,
    ) -> None:
        self.config = config
        self.registrations = registrations
        self.store = store
        self.backend = backend
        self.hasher = hasher
        self.box = box
        self.mail = mail
        self.limiter = limiter
        self.gate = gate
        self.antibot = antibot
        self.captcha = captcha
        self.limit = Limit(config.security.signups_per_hour, 3600)
        self.password_after_approval = config.registration.password_after_approval

    def user_id(self, localpart: str) -> str:
        return user_id(localpart, self.config.homeserver.domain)

    def parse(self, body: dict[str, Any]) -> tuple[SignUpForm, dict[str, str]]:
        """Checks that need no peer (grammar, lengths, email syntax, password rules): the
        form and each field's problem. With problems, only the form's localpart means
        anything, and only if "userName" has none."""
        errors: dict[str, str] = {}
        localpart = _text(body, "userName", errors).strip().lower()
        email = _text(body, "email", errors).strip()
        language = (
            _text(body, "language", errors, required=False)
            or (self.config.registration.languages[0])
        )
        password: str | None = None
        if not self.password_after_approval:
            password = _text(body, "password", errors)
        elif body.get("password") is not None:
            # A client that sends one expects it used: say it is not, rather than drop it.
            errors["password"] = "is not asked for here: you choose it after approval"  # noqa: S105
        reason = _text(body, "reason", errors, self.config.registration.require_reason).strip()

        if localpart and "userName" not in errors:
            problem = self._grammar_problem(localpart)
            if problem:
                errors["userName"] = problem
        if email and "email" not in errors:
            try:
                email = valid_email(email, "email")
            except FieldErrors as error:
                errors.update(error.errors)
        if language not in self.config.registration.languages:
            errors["language"] = "must be one of " + ", ".join(self.config.registration.languages)
        if password and "password" not in errors:
            problem = password_problem(password)
            if problem:
                errors["password"] = problem
        if len(reason) > MAX_REASON_CHARS:
            errors["reason"] = f"must be at most {MAX_REASON_CHARS} characters"
        return SignUpForm(localpart, email, language, password, reason), errors

    def _grammar_problem(self, localpart: str) -> str | None:
        if not user_id_fits(localpart, self.config.homeserver.domain):
            return "is too long"
        if not LOCALPART_RE.match(localpart):
            return f"may only contain {LOCALPART_RULE}"
        if self._reserved(localpart):
            return "is reserved"
        return None

    async def name_problem(self, localpart: str) -> str | None:
        """What is wrong with a wished name (grammar, reserved, taken here or on the
        homeserver), None when it is free: the sign-up's checks, for a name chosen later."""
        return self._grammar_problem(localpart) or await self._name_problem(localpart)

    def _reserved(self, localpart: str) -> bool:
        if localpart == self.config.appservice.bot_username:
            return True
        return any(
            fnmatch.fnmatchcase(localpart, p) for p in self.config.registration.reserved_usernames
        )

    async def check_name(self, form: SignUpForm, errors: dict[str, str]) -> SignUpForm:
        """The form if parse() found no problem and the name is free; else every field's
        problem in one FieldErrors (no second round trip for a taken name). The homeserver
        is asked only about a well-formed name."""
        if "userName" not in errors:
            problem = await self._name_problem(form.localpart)
            if problem:
                errors["userName"] = problem
        if errors:
            raise FieldErrors(errors)
        return form

    async def _name_problem(self, localpart: str) -> str | None:
        if await self.store.name_requested(localpart):
            return "is already taken"
        availability = await self.backend.username_available(localpart)
        if availability is Availability.TAKEN:
            return "is already taken"
        if availability is Availability.RESERVED:
            return "is reserved"
        if availability is Availability.INVALID:
            return "is not allowed by the homeserver"
        return None

    async def sign_up(self, body: dict[str, Any], address: str) -> SignUpAnswer:
        # Cheapest first, so that no refusal costs a hash or a homeserver call: the honeypot,
        # the closed gate and the blocks (all in memory), the rate limit (in memory once an
        # address is over it); then the invite and the proof of work (the database), the
        # CAPTCHA (its provider), and only for a sign-up no check refused, the name's
        # availability (the homeserver) and the password's hash.
        self.antibot.check_honeypot(body)
        invited = bool(body.get("invite"))
        if not invited:
            reason = await self.gate.closed_reason()
            if reason is not None:
                raise SignUpsClosed(reason)
        form, errors = self.parse(body)
        await self._refuse_blocked(form, errors, address)
        await self.limiter.hit(address_key("signup", address), self.limit)
        invite = None
        if invited:
            invite = await self.gate.valid_invite(str(body["invite"]))
            if invite is None:
                raise InviteInvalid
        await self.antibot.check_proof_of_work(body)
        if not await self.captcha.verify(body, address):
            raise SignUpRefused("the CAPTCHA check failed")
        form = await self.check_name(form, errors)
        new = NewRequest(
            localpart=form.localpart,
            email=form.email,
            language=form.language,
            reason=form.reason,
            # Without a password, nothing about one is stored: no hash opens the account
            # until the person sets a password with the welcome mail's link.
            password_hash=await self.hasher.hash(form.password) if form.password else "",
            password_encrypted=self.box.encrypt(form.password) if form.password else None,
            invite_id=invite.id if invite else None,
        )
        confirmed = not self.config.registration.require_email_confirmation
        status_token = secrets.token_urlsafe(32)

        async def after(conn: LoggingConnection, request: RegistrationRequest) -> None:
            nonlocal status_token
            # In the sign-up's transaction: a use of the invite and the request go together.
            if invite is not None and not await Gate.claim_invite(conn, invite.id):
                raise InviteInvalid
            if not confirmed:
                await self.mail.confirmation(conn, request)
                status_token = await self.mail.tokens.issue_token(
                    conn, request.id, STATUS_PURPOSE, STATUS_LINK_MS
                )

        try:
            created = await self.registrations.create(new, confirmed=confirmed, after=after)
        except NameAlreadyRequested:
            raise FieldErrors({"userName": "is already taken"}) from None
        except EmailInUse as in_use:
            await self.tell_email_owner(in_use.holder, form.email, self.user_id(form.localpart))
            log.info("A sign-up for %s used an email already in use", self.user_id(form.localpart))
            return SignUpAnswer(
                initial_state(confirmed, invited=invite is not None),
                form.localpart,
                form.email,
                status_token,
            )
        if not confirmed:
            # The sign-up's own confirmation is never held back (an address has one open
            # request at most), but it counts: a resend right after it sends nothing.
            await self.limiter.recipient_may_get_mail(form.email)
        if invite is None:
            await self.gate.apply_daily_cap()
        return SignUpAnswer(created.state, form.localpart, created.email, status_token)

    async def _refuse_blocked(self, form: SignUpForm, errors: dict[str, str], address: str) -> None:
        """Raise SignUpRefused if the gate's blocks or email domain lists refuse what of the
        form is valid. The admin room hears of it later, a wave of refusals in few notes."""
        localpart = form.localpart if form.localpart and "userName" not in errors else None
        email = form.email if form.email and "email" not in errors else None
        refusal = await self.gate.refusal(localpart, email, address)
        if refusal is None:
            return
        if self.config.registration.tell_room_about_blocked:
            whose = f" for {self.user_id(localpart)}" if localpart else ""
            self.gate.refusal_notes.refused(refusal, f"Refused a sign-up{whose}: {refusal.why}.")
        raise SignUpRefused(refusal.why)

    async def status_token(self, request_id: str) -> str:
        """A fresh token for the request's status page (the mail's link is elsewhere)."""
        return await self.mail.tokens.issue_token(
            self.store.db, request_id, STATUS_PURPOSE, STATUS_LINK_MS
        )

    async def tell_email_owner(
        self, holder: RegistrationRequest | None, email: str, attempted_user_id: str
    ) -> None:
        """Mail the owner of an address in use that someone tried it for another account
        (`holder` is None when a concurrent sign-up took the address first)."""
        holder = holder or await self.store.holder_of_email(email)
        if holder is not None:
            await self.mail.email_in_use(holder, attempted_user_id)

    async def resend_confirmation(self, email: str, address: str) -> None:
        """Send a fresh link for the address's newest unconfirmed request (if any).

        The caller answers the same whatever happens here: whether a request exists, or
        the recipient has had a mail in the last minutes, is nobody's business. Counted
        before the look-up, so a known and an unknown address cost the same."""
        await self.limiter.hit(address_key("resend", address), RESEND_PER_ADDRESS)
        email = email.strip()
        if not await self.limiter.recipient_may_get_mail(email):
            return
        request = await self.store.newest_unconfirmed(email)
        if request is None:
            return
        async with transaction(self.store.db) as conn:
            await self.mail.confirmation(conn, request)
        self.mail.mailer.wake()
        log.info("Confirmation mail sent again for request %s", request.id)
