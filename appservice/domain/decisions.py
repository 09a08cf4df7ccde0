"""Admins' decisions on requests, from the admin room and the admin API alike."""

from __future__ import annotations

from gatekeeper.appservice.config import RegistrationConfig
from gatekeeper.appservice.domain.applicant_mail import ApplicantMail
from gatekeeper.appservice.domain.registrations import Registrations, Result


class Decisions:
    def __init__(
        self, config: RegistrationConfig, registrations: Registrations, mail: ApplicantMail
    ) -> None:
        self.config = config
        self.registrations = registrations
        self.mail = mail

    async def approve(self, request_id: str, actor: str) -> Result:
        return await self.registrations.approve(request_id, actor)

    async def reject(self, request_id: str, actor: str, reason: str | None) -> Result:
        after = self.mail.rejected if self.config.send_rejection_mail else None
        return await self.registrations.reject(request_id, actor, reason or None, after)
