"""The mails an applicant gets, each queued in the transaction of the change it tells of."""

from __future__ import annotations

from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.i18n import Catalogue
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.runtime.mailer import Mailer
from gatekeeper.appservice.storage.database import acquire, transaction
from gatekeeper.appservice.storage.mail_tokens import (
    CONFIRM_PURPOSE,
    DELETE_ACCOUNT_PURPOSE,
    EMAIL_CHANGE_PURPOSE,
    RESET_PURPOSE,
    STATUS_PURPOSE,
    MailTokens,
)
from gatekeeper.appservice.storage.ratelimit import RateLimiter

CONFIRM_LINK_MS = (
    60 * 60 * 1000
)  # mail links live at most an hour (docs/architecture.md, security rules)
STATUS_LINK_MS = 30 * 24 * 60 * 60 * 1000


class ApplicantMail:
    def __init__(
        self,
        config: Config,
        tokens: MailTokens,
        mailer: Mailer,
        catalogue: Catalogue,
        limiter: RateLimiter,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.mailer = mailer
        self.catalogue = catalogue
        self.limiter = limiter

    def user_id(self, request: RegistrationRequest) -> str:
        domain = self.config.homeserver.domain
        no_name = self.catalogue.text(request.language, "request.no_name_yet", domain=domain)
        return request.shown_user_id(domain, no_name)

    async def _send(
        self,
        conn: LoggingConnection,
        request: RegistrationRequest,
        key: str,
        to: str | None = None,
        **params: str,
    ) -> None:
        params = {"user_id": self.user_id(request), **params}
        await self.mailer.enqueue(
            conn,
            to or request.email,
            self.catalogue.text(request.language, f"mail.{key}.subject", **params),
            self.catalogue.text(request.language, f"mail.{key}.body", **params),
        )

    async def confirmation(self, conn: LoggingConnection, request: RegistrationRequest) -> None:
        confirm = await self.tokens.issue_token(conn, request.id, CONFIRM_PURPOSE, CONFIRM_LINK_MS)
        status = await self.tokens.issue_token(conn, request.id, STATUS_PURPOSE, STATUS_LINK_MS)
        base = self.config.web.public_base_url
        await self._send(
            conn,
            request,
            "confirm_email",
            confirm_link=f"{base}/confirm-email?token={confirm}",
            status_link=f"{base}/status?token={status}",
            hours=str(CONFIRM_LINK_MS // 3_600_000),
            # The mail names the page's button: opening the link alone confirms nothing.
            button=self.catalogue.text(request.language, "page.confirm.submit"),
        )

    async def _with_link(
        self,
        request: RegistrationRequest,
        key: str,
        purpose: str,
        path: str,
        link_param: str,
        to: str | None = None,
        valid_ms: int = CONFIRM_LINK_MS,
        **params: str,
    ) -> None:
        async with transaction(self.tokens.db) as conn:
            token = await self.tokens.issue_token(conn, request.id, purpose, valid_ms)
            await self._send(
                conn,
                request,
                key,
                to,
                **{link_param: f"{self.config.web.public_base_url}/{path}?token={token}"},
                hours=str(CONFIRM_LINK_MS // 3_600_000),
                **params,
            )
        self.mailer.wake()

    async def password_reset(self, request: RegistrationRequest) -> None:
        await self._with_link(
            request, "password_reset", RESET_PURPOSE, "reset-password", "reset_link"
        )

    async def account_deletion(self, request: RegistrationRequest) -> None:
        await self._with_link(
            request, "delete_account", DELETE_ACCOUNT_PURPOSE, "delete-account", "delete_link"
        )

    async def email_in_use(self, holder: RegistrationRequest, attempted_user_id: str) -> None:
        """Tell the owner of an address that someone tried to use it for another account,
        as often as the recipient's mail limit allows (a stranger causes this mail)."""
        if not await self.limiter.recipient_may_get_mail(holder.email):
            return
        if holder.state is State.UNVERIFIED:
            # Nothing to reset yet: the owner may look at the open request or withdraw it.
            await self._with_link(
                holder,
                "email_in_use_unconfirmed",
                STATUS_PURPOSE,
                "status",
                "status_link",
                valid_ms=STATUS_LINK_MS,
                attempted_user_id=attempted_user_id,
            )
        elif holder.state is State.DEACTIVATED:
            # A reset would lead nowhere: the account is gone, and keeps its address.
            async with acquire(self.tokens.db) as conn:
                await self._send(
                    conn, holder, "email_in_use_deactivated", attempted_user_id=attempted_user_id
                )
            self.mailer.wake()
        else:
            await self._with_link(
                holder,
                "email_in_use",
                RESET_PURPOSE,
                "reset-password",
                "reset_link",
                attempted_user_id=attempted_user_id,
            )

    async def email_change(self, request: RegistrationRequest, new_email: str) -> None:
        await self._with_link(
            request,
            "email_change",
            EMAIL_CHANGE_PURPOSE,
            "confirm-email-change",
            "confirm_link",
            new_email,
        )

    async def email_changed(self, request: RegistrationRequest, old_email: str) -> None:
        async with acquire(self.tokens.db) as conn:
            await self._send(conn, request, "email_changed", old_email, new_email=request.email)
        self.mailer.wake()

    async def two_factor_reset(self, conn: LoggingConnection, request: RegistrationRequest) -> None:
        """The admins turned the second factor off: in the transaction that did it."""
        login_link = f"{self.config.web.public_base_url}/login"
        await self._send(conn, request, "two_factor_reset", login_link=login_link)

    async def welcome(self, conn: LoggingConnection, request: RegistrationRequest) -> None:
        await self._send(conn, request, "welcome", homeserver_url=self.config.homeserver.client_url)

    async def welcome_set_password(
        self, conn: LoggingConnection, request: RegistrationRequest
    ) -> None:
        """The welcome of an account made without a usable password: its reset link sets
        the first one. In the transaction that records the account, so both go together."""
        token = await self.tokens.issue_token(conn, request.id, RESET_PURPOSE, CONFIRM_LINK_MS)
        base = self.config.web.public_base_url
        await self._send(
            conn,
            request,
            "welcome_set_password",
            homeserver_url=self.config.homeserver.client_url,
            set_password_link=f"{base}/reset-password?token={token}",
            login_link=f"{base}/login",
            hours=str(CONFIRM_LINK_MS // 3_600_000),
        )

    async def rejected(self, conn: LoggingConnection, request: RegistrationRequest) -> None:
        reason = request.decision_reason or self.catalogue.text(
            request.language, "mail.rejected.no_reason"
        )
        await self._send(conn, request, "rejected", reason=reason)
