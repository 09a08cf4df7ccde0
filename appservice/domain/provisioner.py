"""Creating approved accounts (on Synapse or MAS) from the persistent queue, with back-off."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.registration_request import RegistrationRequest
from gatekeeper.appservice.domain.registrations import Registrations
from gatekeeper.appservice.homeserver.account_backend import (
    AccountBackend,
    AccountTaken,
    HomeserverUnavailable,
    NewAccount,
    ProvisioningRefused,
)
from gatekeeper.appservice.storage.crypto import SecretBox, TamperedSecret
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.provisioner")

# Without an admin token, newcomers are invited to their rooms by the bot instead.
Inviter = Callable[[str, str], Awaitable[None]]


class Provisioner:
    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        store: RegistrationStore,
        backend: AccountBackend,
        box: SecretBox,
        mail: ApplicantMail,
        invite: Inviter,
    ) -> None:
        self.config = config.registration
        self.registrations = registrations
        self.store = store
        self.backend = backend
        self.box = box
        self.mail = mail
        self.invite = invite

    async def step(self) -> float | None:
        """Provision every due request; return seconds until the next retry is due."""
        # Rounds run one at a time in the active process: any request still marked as
        # being provisioned now is one whose round died before its outcome was written.
        resumed = await self.registrations.resume_interrupted()
        if resumed:
            log.info("Resumed %d interrupted account creations", resumed)
        while (request := await self.registrations.claim_for_provisioning()) is not None:
            await self.provision(request)
        due = await self.store.next_provisioning_due()
        return None if due is None else (due - now_ms()) / 1000

    async def provision(self, request: RegistrationRequest) -> None:
        # A request signed up under registration.password: after_approval holds no password;
        # one from before a switch to that mode keeps the password it was made with.
        password = None
        if request.password_encrypted is not None:
            try:
                password = self.box.decrypt(request.password_encrypted)
            except TamperedSecret:
                await self.registrations.fail_provisioning(
                    request.id,
                    "the stored password cannot be decrypted (key removed or data altered)",
                )
                return
        try:
            user_id = await self.backend.create_account(
                NewAccount(
                    request.localpart,
                    password,
                    displayname=request.localpart,
                    email=request.email,
                    approved_at_ms=request.decided_at or request.created_at,
                )
            )
        except AccountTaken:
            await self.registrations.fail_provisioning(
                request.id, "the name was taken on the homeserver in the meantime"
            )
        except (HomeserverUnavailable, ProvisioningRefused) as error:
            await self._retry_or_fail(request, str(error))
        else:
            result = await self.registrations.finish_provisioning(
                request.id,
                user_id,
                after=self.mail.welcome if password else self.mail.welcome_set_password,
            )
            if result.changed:
                log.info("Created %s for request %s", user_id, request.id)
                await self._join_newcomer_rooms(user_id)

    async def _retry_or_fail(self, request: RegistrationRequest, error: str) -> None:
        attempts = request.provision_attempts
        if attempts >= self.config.provisioning_max_attempts:
            log.error("Giving up on request %s after %d attempts: %s", request.id, attempts, error)
            await self.registrations.fail_provisioning(
                request.id, f"gave up after {attempts} attempts: {error}"
            )
            return
        delay = min(
            self.config.retry_initial_seconds * 2 ** (attempts - 1), self.config.retry_max_seconds
        )
        log.warning(
            "Request %s: attempt %d failed (%s); next in %.0f s", request.id, attempts, error, delay
        )
        await self.registrations.retry_provisioning(request.id, error, now_ms() + int(delay * 1000))

    async def _join_newcomer_rooms(self, user_id: str) -> None:
        for room in self.config.newcomer_rooms:
            try:
                if self.backend.can_join_users:
                    await self.backend.join_room(user_id, room)
                else:
                    await self.invite(user_id, room)
            except Exception:
                # The account exists; a room that fails to take them in is the admins' to fix.
                log.exception("Could not bring %s into %s", user_id, room)
