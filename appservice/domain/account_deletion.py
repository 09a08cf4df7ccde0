"""An account holder deletes their own account: asked on the settings page (after the
password again), confirmed by a single-use mail link that lives an hour.

The deletion is the admins' `!deactivate --erase` (appservice/domain/moderation.py), done
by the account holder, and the request's personal data goes at once (retention.py)
rather than after `retention.closed_requests_days`.
"""

from __future__ import annotations

import logging

from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.moderation import Moderation, ModerationError
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.storage.mail_tokens import DELETE_ACCOUNT_PURPOSE, MailTokens
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.retention import erase_requests

log = logging.getLogger("gatekeeper.account_deletion")

ACTOR = "account holder"


class AccountDeletion:
    def __init__(
        self,
        store: RegistrationStore,
        tokens: MailTokens,
        mail: ApplicantMail,
        moderation: Moderation,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.mail = mail
        self.moderation = moderation

    async def ask(self, account: RegistrationRequest) -> None:
        """Mail the link that confirms the deletion."""
        await self.mail.account_deletion(account)

    async def confirm(self, token: str) -> bool:
        """Delete the account of this link (once); False if the link is not valid (any
        more) or the account cannot be deleted here."""
        request_id = await self.tokens.redeem_token(token, DELETE_ACCOUNT_PURPOSE)
        request = await self.store.get(request_id) if request_id else None
        if request is None or request.state is not State.ACTIVE or not request.matrix_user_id:
            return False
        try:
            target = await self.moderation.target(request.matrix_user_id)
            await self.moderation.deactivate(target, ACTOR, erase=True, reason="asked by them")
        except ModerationError as error:
            # E.g. an admin's own account: the admins take it off their list first.
            log.warning("Cannot delete %s as asked: %s", request.matrix_user_id, error)
            return False
        async with transaction(self.store.db) as conn:
            await erase_requests(conn, [request.id])
        log.info("%s deleted their account (request %s)", request.matrix_user_id, request.id)
        return True
