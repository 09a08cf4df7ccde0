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

# Where the homeserver cannot join newcomers to a room, the bot invites them. It raises
# ProvisioningRefused when it cannot.
Inviter = Callable[[str, str], Awaitable[None]]
# A one-line note into the admin room (Gatekeeper._room_note).
RoomNote = Callable[[str], Awaitable[None]]


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
        room_note: RoomNote,
    ) -> None:
        self.config = config.registration
        self.registrations = registrations
        self.store = store
        self.backend = backend
        self.box = box
        self.mail = mail
        self.invite = invite
        self.room_note = room_note

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
        # Only named requests are claimed (RegistrationStore.next_due_for_provisioning).
        assert request.localpart is not None
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
                await self._bring_in(user_id, room)
            except (ProvisioningRefused, HomeserverUnavailable) as error:
                log.warning("Could not bring %s into %s: %s", user_id, room, error)
                await self._tell_admins(user_id, room, str(error))
            except Exception as error:
                log.exception("Could not bring %s into %s", user_id, room)
                await self._tell_admins(user_id, room, f"{type(error).__name__} (see the log)")

    async def _tell_admins(self, user_id: str, room: str, problem: str) -> None:
        """The account exists; a room that does not take it in is the admins' to fix."""
        try:
            await self.room_note(
                f"⚠️ {user_id} could not be brought into {room}: {problem[:300]}. Invite "
                "them yourself; the operator guide's “Newcomer rooms” says what Gatekeeper "
                "needs in such a room."
            )
        except Exception:
            log.exception("Could not tell the admin room that %s is not in %s", user_id, room)

    async def _bring_in(self, user_id: str, room: str) -> None:
        """Join the account to the room, or at least invite it (MAS joins nobody)."""
        if self.backend.can_join_users:
            try:
                await self.backend.join_room(user_id, room)
                return
            except ProvisioningRefused as refused:
                # Mostly an invite-only room where Gatekeeper's admin user may not invite:
                # the bot invites, and then the account can join.
                log.info("Joining %s to %s was refused (%s); inviting", user_id, room, refused)
            await self.invite(user_id, room)
            await self.backend.join_room(user_id, room)
            return
        await self.invite(user_id, room)
