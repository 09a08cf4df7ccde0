"""The way back in for someone who lost their second factor and their recovery codes.

The admins first check, outside Gatekeeper, that it is really the person asking; then
`!reset-2fa` (bot/commands_accounts.py) turns the two-factor login off. In one
transaction: the TOTP seed and the recovery codes go, a row in `two_factor_reset`
(migration 010) records who did it, when and why, and a mail to the person is queued.
After it every web session, remembered device and waiting second-factor ticket of the
account ends.
"""

from __future__ import annotations

import logging

from mautrix.util.async_db import Database

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.registration_request import RegistrationRequest
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.sessions import Sessions
from gatekeeper.appservice.storage.totp import TotpStore
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.two_factor")


class TwoFactorResets:
    def __init__(
        self,
        config: Config,
        db: Database,
        store: RegistrationStore,
        totp: TotpStore,
        sessions: Sessions,
        mail: ApplicantMail,
    ) -> None:
        self.domain = config.homeserver.domain
        self.db = db
        self.store = store
        self.totp = totp
        self.sessions = sessions
        self.mail = mail

    async def find(self, text: str) -> RegistrationRequest | None:
        """The request `text` names: its ID, or what its owner logs in with (the Matrix ID,
        the user name or the email address)."""
        return await self.store.get(text) or await self.store.for_login(text, self.domain)

    async def reset(self, request: RegistrationRequest, actor: str, reason: str | None) -> bool:
        """Turn the request's two-factor login off; False if it was not on (nothing done)."""
        async with transaction(self.db) as conn:
            # The DELETE decides: of two admins resetting at once, one records and mails.
            if not await self.totp.disable(request.id, conn):
                return False
            await conn.execute(
                "INSERT INTO two_factor_reset (request_id, at, actor, reason)"
                " VALUES ($1, $2, $3, $4)",
                request.id,
                now_ms(),
                actor,
                reason,
            )
            await self.mail.two_factor_reset(conn, request)
        self.mail.mailer.wake()
        await self.sessions.end_all_others(request.id, None)
        log.info("%s turned off the two-factor login of request %s", actor, request.id)
        return True
