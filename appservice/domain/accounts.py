"""Self-service for applicants and account holders: login, second factor, reset, changes.

People log in with their email address, user name or Matrix ID. Every answer that could
tell whether one is known is the same for known and unknown ones, and the password
hasher runs on both paths. Failed logins count against the account, whichever of its
names was typed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.errors import FieldErrors
from gatekeeper.appservice.domain.passwords import PasswordHasher, password_problem
from gatekeeper.appservice.domain.registration_request import (
    LOGIN_STATES,
    RegistrationRequest,
    State,
)
from gatekeeper.appservice.domain.signup import valid_email
from gatekeeper.appservice.homeserver.account_backend import (
    AccountBackend,
    HomeserverUnavailable,
    ProvisioningRefused,
)
from gatekeeper.appservice.storage.crypto import SecretBox
from gatekeeper.appservice.storage.mail_tokens import (
    EMAIL_CHANGE_PURPOSE,
    RESET_PURPOSE,
    MailTokens,
)
from gatekeeper.appservice.storage.ratelimit import (
    Limit,
    Lockout,
    RateLimited,
    RateLimiter,
    address_key,
)
from gatekeeper.appservice.storage.registration_store import LoginAccount, RegistrationStore
from gatekeeper.appservice.storage.sessions import Session, Sessions
from gatekeeper.appservice.storage.totp import Enrolment, TotpStore
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.accounts")

# Per client address: generous enough for people behind a shared address (NAT, CGNAT);
# the mails to one account are capped by RESET_PER_ACCOUNT.
RESET_PER_ADDRESS = Limit(10, 3600)
RESET_PER_ACCOUNT = Limit(3, 3600)


class LoginStatus(enum.StrEnum):
    LOGGED_IN = "logged-in"
    SECOND_FACTOR_REQUIRED = "second-factor-required"
    INVALID_CREDENTIALS = "invalid-credentials"
    # The password was right and the code too, but it was accepted a moment ago (at login
    # or when 2FA was turned on): a code works once, so wait for the app's next one.
    CODE_JUST_USED = "code-just-used"
    # The second-factor form's ticket is used up or too old: type the password again.
    TICKET_EXPIRED = "ticket-expired"


class MatrixOutcome(enum.StrEnum):
    """Whether a password or email change reached the Matrix account: never claim it did."""

    CHANGED = "changed"
    NO_ACCOUNT = "no-account"  # nothing on Matrix to change (yet)
    UNCHANGED = "unchanged"  # the Matrix account kept the old value


@dataclass(frozen=True)
class LoginResult:
    status: LoginStatus
    login_token: str | None = None
    session: Session | None = None
    device_token: str | None = None
    timeout_until_ms: int | None = None
    # For the second factor's next try: stands for the right password (Sessions.TICKET_MS).
    ticket: str | None = None


@dataclass(frozen=True)
class RightPassword:
    """A login's account whose password was right, and whether failed logins were counted
    against it when its lock was checked (something for a successful login to forget)."""

    account: LoginAccount
    failures_counted: bool


def _retry_at(limited: RateLimited) -> int:
    """When a refused login may try again, in ms."""
    return now_ms() + limited.retry_after * 1000


def lockout_name(request: RegistrationRequest | None, typed: str = "") -> str:
    """What failed logins count against: the account, whichever of its names was typed;
    for an unknown name, the name (so it locks just like a known one)."""
    return f"request:{request.id}" if request is not None else f"typed:{typed}"


class Accounts:
    def __init__(
        self,
        config: Config,
        store: RegistrationStore,
        tokens: MailTokens,
        sessions: Sessions,
        hasher: PasswordHasher,
        totp: TotpStore,
        limiter: RateLimiter,
        lockout: Lockout,
        mail: ApplicantMail,
        backend: AccountBackend,
        box: SecretBox,
    ) -> None:
        self.config = config
        self.store = store
        self.tokens = tokens
        self.sessions = sessions
        self.hasher = hasher
        self.totp = totp
        self.limiter = limiter
        self.lockout = lockout
        self.mail = mail
        self.backend = backend
        self.box = box
        self.login_limit = Limit(config.security.login_attempts_per_minute, 60)
        self.domain = config.homeserver.domain
        self.password_after_approval = config.registration.password_after_approval
        self._background: set[asyncio.Task[None]] = set()

    async def _locked_until(self, name: str) -> int | None:
        try:
            await self.lockout.check(name)
        except RateLimited as limited:
            return _retry_at(limited)
        return None

    async def _check_password(
        self, identifier: str, password: str, attempts: str | None = None
    ) -> tuple[RightPassword | None, int | None]:
        """The account if the password is right and the account not locked; else the
        lock's end (if locked). The hasher runs whether or not the identifier is known,
        never for a locked name (known or not: a lock says nothing about existence).
        `attempts`: the rate limit's key that counts a login's tries per address; one
        this process knows to be over it is refused before any look-up, and a try the
        lock refuses is not counted."""
        if attempts is not None:
            self.limiter.refuse_if_known_over(attempts, self.login_limit)
        try:
            self.lockout.known_lock(identifier)
            account = await self.store.login_account(identifier, self.domain)
            request = account.request if account is not None else None
            name = lockout_name(request, identifier)
            failures_counted = await self.lockout.check(name, typed=identifier)
        except RateLimited as limited:
            # No hash, no count: a flood of guesses at a locked account tests no password
            # and costs next to nothing; the quick answer tells only of the lock, which the
            # two-factor login tells anyway (timeoutUntil).
            return None, _retry_at(limited)
        if attempts is not None:
            await self.limiter.hit(attempts, self.login_limit)
        if request is None or not request.password_hash:
            # Unknown, or no password set yet: the same work, so the time tells nothing.
            await self.hasher.verify_dummy(password)
            right = False
        else:
            right = await self.hasher.verify(request.password_hash, password)
        if not right or account is None:
            await self.lockout.failure(name)
            return None, None
        if self.hasher.needs_rehash(account.request.password_hash):
            await self.store.set_password_hash(account.request.id, await self.hasher.hash(password))
        return RightPassword(account, failures_counted), None

    async def login(
        self, identifier: str, password: str, address: str, device_token: str | None
    ) -> LoginResult:
        """`identifier`: the email address, the user name or the Matrix ID. With 2FA on
        (and the device not remembered) the result carries a ticket for the second step."""
        checked, _ = await self._check_password(identifier, password, address_key("login", address))
        if checked is None:
            return LoginResult(LoginStatus.INVALID_CREDENTIALS)
        request = checked.account.request
        # Whether 2FA is on was read with the account (a round trip saved), so before the
        # hash: a login that races 2FA being turned on by those milliseconds may pass
        # without it and keep its session, as one racing the read and the session could.
        if checked.account.two_factor and not await self.sessions.device_remembered(
            request.id, device_token
        ):
            ticket = await self.sessions.issue_ticket(request.id)
            return LoginResult(LoginStatus.SECOND_FACTOR_REQUIRED, ticket=ticket)
        if checked.failures_counted:
            # Nothing to forget otherwise. A failure that lands between the check and here
            # then stays counted: stricter than forgetting it, and a round trip saved.
            await self.lockout.success(lockout_name(request))
        token, session = await self.sessions.create(request.id)
        return LoginResult(LoginStatus.LOGGED_IN, token, session)

    async def login_with_second_factor(
        self, identifier: str, password: str, code: str, remember: bool, address: str
    ) -> LoginResult:
        """Both factors at once (the JSON API); `code` is a TOTP or a recovery code."""
        checked, locked_until = await self._check_password(
            identifier, password, address_key("2fa", address)
        )
        if checked is None:
            return LoginResult(LoginStatus.INVALID_CREDENTIALS, timeout_until_ms=locked_until)
        return await self._second_factor(checked.account.request, code, remember)

    async def login_with_ticket(
        self, ticket: str, code: str, remember: bool, address: str
    ) -> LoginResult:
        """The second step after `login()` (the login page): its ticket stands for the
        password. Each try uses the ticket up; a wrong code gets a new one that ends when
        the first would have, a lock or a login none."""
        await self.limiter.hit(address_key("2fa", address), self.login_limit)
        redeemed = await self.sessions.redeem_ticket(ticket)
        request = await self.store.get(redeemed[0]) if redeemed else None
        if redeemed is None or request is None or request.state not in LOGIN_STATES:
            return LoginResult(LoginStatus.TICKET_EXPIRED)
        locked_until = await self._locked_until(lockout_name(request))
        if locked_until is not None:
            return LoginResult(LoginStatus.INVALID_CREDENTIALS, timeout_until_ms=locked_until)
        result = await self._second_factor(request, code, remember)
        if result.status is LoginStatus.LOGGED_IN or result.timeout_until_ms is not None:
            return result
        return replace(result, ticket=await self.sessions.issue_ticket(request.id, redeemed[1]))

    async def _second_factor(
        self, request: RegistrationRequest, code: str, remember: bool
    ) -> LoginResult:
        """After a right password: log in if `code` is a valid TOTP code or an unused
        recovery code. A wrong or missing one is a failed attempt like a wrong password."""
        name = lockout_name(request)
        if await self.totp.verify(request.id, code) or await self.totp.use_recovery_code(
            request.id, code
        ):
            await self.lockout.success(name)
            token, session = await self.sessions.create(request.id)
            device = await self.sessions.remember_device(request.id) if remember else None
            return LoginResult(LoginStatus.LOGGED_IN, token, session, device)
        await self.lockout.failure(name)
        locked_until = await self._locked_until(name)
        just_used = locked_until is None and await self.totp.just_used(request.id, code)
        status = LoginStatus.CODE_JUST_USED if just_used else LoginStatus.INVALID_CREDENTIALS
        return LoginResult(status, timeout_until_ms=locked_until)

    # --- reset ---------------------------------------------------------------------------

    async def request_password_reset(self, email: str, address: str) -> None:
        await self.limiter.hit(address_key("reset", address), RESET_PER_ADDRESS)
        request = await self.store.for_login(email, self.domain)
        if request is None:
            return
        # The mail is queued after the answer, so a known address answers as fast as an
        # unknown one (no timing difference to learn from).
        task = asyncio.create_task(self._send_reset(request))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_reset(self, request: RegistrationRequest) -> None:
        try:
            await self.limiter.hit(f"reset:account:{request.id}", RESET_PER_ACCOUNT)
            await self.mail.password_reset(request)
        except RateLimited:
            pass  # answered like any other request: nothing to learn from it
        except Exception:
            log.exception("Could not queue the reset mail of request %s", request.id)

    async def reset_password(
        self, email: str | None, token: str, new_password: str
    ) -> MatrixOutcome | None:
        """None if the token is not valid (any more), or not for `email` when one is given
        (the token alone names the request; older API clients also send the address)."""
        problem = password_problem(new_password)
        if problem:
            raise FieldErrors({"newPassword": problem})
        request_id = await self.tokens.redeem_token(token, RESET_PURPOSE)
        request = await self.store.get(request_id) if request_id else None
        if request is None or (
            email is not None and request.email.lower() != email.strip().lower()
        ):
            return None
        return await self._set_password(request, new_password, keep=None)

    # --- settings ------------------------------------------------------------------------

    async def change_password(
        self, request: RegistrationRequest, session: Session, new_password: str
    ) -> MatrixOutcome:
        problem = password_problem(new_password)
        if problem:
            raise FieldErrors({"newPassword": problem})
        return await self._set_password(request, new_password, keep=session)

    async def _set_password(
        self, request: RegistrationRequest, password: str, keep: Session | None
    ) -> MatrixOutcome:
        # After approval, nothing reversible about a password is ever kept: the account is
        # made without one and gets it from the person directly.
        encrypted = None if self.password_after_approval else self.box.encrypt(password)
        account_to_come = await self.store.set_password(
            request.id, await self.hasher.hash(password), encrypted
        )
        await self.tokens.void_tokens(request.id, RESET_PURPOSE)
        await self.sessions.end_all_others(request.id, keep)
        if account_to_come:
            return MatrixOutcome.NO_ACCOUNT
        current = await self.store.get(request.id)
        assert current is not None
        return await self._on_matrix(
            current,
            "password",
            lambda user_id: self.backend.set_password(
                user_id, password, self.config.web.logout_matrix_devices_on_password_change
            ),
        )

    async def _on_matrix(
        self,
        request: RegistrationRequest,
        what: str,
        change: Callable[[str], Awaitable[None]],
    ) -> MatrixOutcome:
        """Make the change on the Matrix account, if there is one; say whether it took."""
        if request.state is State.PROVISIONING:
            # Being made right now, with what the request held a moment ago.
            log.error(
                "Could not set the Matrix %s of request %s: its account is being made",
                what,
                request.id,
            )
            return MatrixOutcome.UNCHANGED
        if request.state is not State.ACTIVE or not request.matrix_user_id:
            return MatrixOutcome.NO_ACCOUNT
        try:
            await change(request.matrix_user_id)
        except (HomeserverUnavailable, ProvisioningRefused) as error:
            log.error("Could not set the Matrix %s of %s: %s", what, request.matrix_user_id, error)
            return MatrixOutcome.UNCHANGED
        return MatrixOutcome.CHANGED

    async def set_language(self, request: RegistrationRequest, language: str) -> None:
        if language not in self.config.registration.languages:
            raise FieldErrors(
                {"language": "must be one of " + ", ".join(self.config.registration.languages)}
            )
        await self.store.set_language(request.id, language)

    async def change_email(self, request: RegistrationRequest, new_email: str) -> None:
        email = valid_email(new_email, "newEmail")
        holder = await self.store.holder_of_email(email, other_than=request.id)
        if holder is not None:
            # An address belongs to one account: its owner hears of the try instead of
            # getting a link, and the answer is the usual one (nobody learns who owns it).
            await self.mail.email_in_use(holder, self.mail.user_id(request))
            return
        await self.store.set_pending_email(request.id, email)
        await self.tokens.void_tokens(request.id, EMAIL_CHANGE_PURPOSE)
        await self.mail.email_change(request, email)

    async def confirm_email_change(
        self, request: RegistrationRequest, token: str
    ) -> tuple[str, str]:
        """(status, current email): no-change-in-progress, invalid-token, new-email-confirmed,
        or matrix-unchanged (confirmed here, but the Matrix account kept the old email)."""
        if request.pending_email is None:
            return "no-change-in-progress", request.email
        redeemed = await self.tokens.redeem_token(token, EMAIL_CHANGE_PURPOSE)
        if redeemed != request.id:
            return "invalid-token", request.email
        old_email = await self.store.adopt_pending_email(request.id)
        if old_email is None:
            # Someone else's request or account took the address meanwhile: change dropped.
            return "no-change-in-progress", request.email
        await self.tokens.void_tokens(request.id, RESET_PURPOSE)
        changed = await self.store.get(request.id)
        assert changed is not None
        await self.mail.email_changed(changed, old_email)
        outcome = await self._on_matrix(
            changed, "email", lambda user_id: self.backend.set_email(user_id, changed.email)
        )
        if outcome is MatrixOutcome.UNCHANGED:
            return "matrix-unchanged", changed.email
        return "new-email-confirmed", changed.email

    async def start_2fa(self, request: RegistrationRequest, restart: bool = False) -> Enrolment:
        """The enrolment waiting for its confirming code, if any (an app may have scanned
        it already); a new seed if there is none or `restart`."""
        pending = None if restart else await self.pending_2fa(request)
        return pending or await self.totp.start_enrolment(request.id, request.email)

    async def pending_2fa(self, request: RegistrationRequest) -> Enrolment | None:
        return await self.totp.pending_enrolment(request.id, request.email)

    async def enable_2fa(
        self, request: RegistrationRequest, session: Session, code: str
    ) -> list[str] | None:
        """The new recovery codes, to show once; None if the code does not confirm the
        pending seed (which stays pending)."""
        if not await self.totp.confirm_enrolment(request.id, code):
            return None
        await self.sessions.end_all_others(request.id, session)
        return await self.totp.new_recovery_codes(request.id)

    async def new_recovery_codes(self, request: RegistrationRequest) -> list[str] | None:
        """A new set of recovery codes (the old ones stop working); None with 2FA off."""
        if not await self.totp.is_enabled(request.id):
            return None
        return await self.totp.new_recovery_codes(request.id)

    async def disable_2fa(self, request: RegistrationRequest, session: Session) -> None:
        await self.totp.disable(request.id)
        await self.sessions.end_all_others(request.id, session)

    async def sudo(
        self, request: RegistrationRequest, session: Session, password: str
    ) -> str | None:
        checked, _ = await self._check_password(request.email, password)
        if checked is None or checked.account.request.id != request.id:
            return None
        await self.lockout.success(lockout_name(request))
        return await self.sessions.grant_sudo(session)
