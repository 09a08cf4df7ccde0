"""Self-service for applicants and account holders: login, second factor, reset, changes.

Every answer that could tell whether an email is known is the same for known and
unknown addresses, and the password hasher runs on both paths.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.errors import FieldErrors
from gatekeeper.appservice.domain.passwords import PasswordHasher, password_problem
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
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
from gatekeeper.appservice.storage.registration_store import RegistrationStore
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
        self.password_after_approval = config.registration.password_after_approval
        self._background: set[asyncio.Task[None]] = set()

    async def _check_password(
        self, email: str, password: str
    ) -> tuple[RegistrationRequest | None, int | None]:
        """The request if the password is right and the account not locked; else the
        lock's end (if locked). The hasher runs whether or not the email is known."""
        locked_until = None
        try:
            await self.lockout.check(email)
        except RateLimited as limited:
            locked_until = now_ms() + limited.retry_after * 1000
        request = await self.store.for_login(email)
        if request is None or not request.password_hash:
            # Unknown, or no password set yet: the same work, so the time tells nothing.
            await self.hasher.verify_dummy(password)
            right = False
        else:
            right = await self.hasher.verify(request.password_hash, password)
        if locked_until is not None:
            return None, locked_until
        if not right or request is None:
            await self.lockout.failure(email)
            return None, None
        if self.hasher.needs_rehash(request.password_hash):
            await self.store.set_password_hash(request.id, await self.hasher.hash(password))
        return request, None

    async def login(
        self, email: str, password: str, address: str, device_token: str | None
    ) -> LoginResult:
        await self.limiter.hit(address_key("login", address), self.login_limit)
        request, _ = await self._check_password(email, password)
        if request is None:
            return LoginResult(LoginStatus.INVALID_CREDENTIALS)
        if await self.totp.is_enabled(request.id) and not await self.sessions.device_remembered(
            request.id, device_token
        ):
            return LoginResult(LoginStatus.SECOND_FACTOR_REQUIRED)
        await self.lockout.success(email)
        token, session = await self.sessions.create(request.id)
        return LoginResult(LoginStatus.LOGGED_IN, token, session)

    async def login_with_second_factor(
        self, email: str, password: str, code: str, remember: bool, address: str
    ) -> LoginResult:
        await self.limiter.hit(address_key("2fa", address), self.login_limit)
        request, locked_until = await self._check_password(email, password)
        if request is None:
            return LoginResult(LoginStatus.INVALID_CREDENTIALS, timeout_until_ms=locked_until)
        if not await self.totp.verify(request.id, code):
            # A wrong or missing code is a failed attempt like a wrong password.
            await self.lockout.failure(email)
            try:
                await self.lockout.check(email)
            except RateLimited as limited:
                locked_until = now_ms() + limited.retry_after * 1000
            return LoginResult(LoginStatus.INVALID_CREDENTIALS, timeout_until_ms=locked_until)
        await self.lockout.success(email)
        token, session = await self.sessions.create(request.id)
        device = await self.sessions.remember_device(request.id) if remember else None
        return LoginResult(LoginStatus.LOGGED_IN, token, session, device)

    # --- reset ---------------------------------------------------------------------------

    async def request_password_reset(self, email: str, address: str) -> None:
        await self.limiter.hit(address_key("reset", address), RESET_PER_ADDRESS)
        request = await self.store.for_login(email)
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
        self, email: str, token: str, new_password: str
    ) -> MatrixOutcome | None:
        """None if the token is not valid (any more) for this email."""
        problem = password_problem(new_password)
        if problem:
            raise FieldErrors({"newPassword": problem})
        request_id = await self.tokens.redeem_token(token, RESET_PURPOSE)
        request = await self.store.get(request_id) if request_id else None
        if request is None or request.email.lower() != email.strip().lower():
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
            await self.mail.email_in_use(holder, request.user_id(self.config.homeserver.domain))
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

    async def start_2fa(self, request: RegistrationRequest) -> Enrolment:
        return await self.totp.start_enrolment(request.id, request.email)

    async def enable_2fa(self, request: RegistrationRequest, session: Session, code: str) -> bool:
        if not await self.totp.confirm_enrolment(request.id, code):
            return False
        await self.sessions.end_all_others(request.id, session)
        return True

    async def disable_2fa(self, request: RegistrationRequest, session: Session) -> None:
        await self.totp.disable(request.id)
        await self.sessions.end_all_others(request.id, session)

    async def sudo(
        self, request: RegistrationRequest, session: Session, password: str
    ) -> str | None:
        email = request.email
        checked, _ = await self._check_password(email, password)
        if checked is None or checked.id != request.id:
            return None
        await self.lockout.success(email)
        return await self.sessions.grant_sudo(session)
