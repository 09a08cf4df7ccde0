"""Sending the confirmation mail again: limited per client and per recipient (no mail bombing)."""

from __future__ import annotations

import asyncio
from typing import Any

from gatekeeper.appservice.runtime.program import Gatekeeper
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    WebClient,
    all_mail_sent,
    new_applicant,
    pass_time,
    sign_up,
)

RESEND = "/api/user/re-trigger-confirmation-email"


async def resend_from(client_address: str, gatekeeper: Gatekeeper, email: str) -> tuple[int, Any]:
    """Ask from `client_address` (the trusted proxy on loopback names it)."""
    async with WebClient(gatekeeper) as client:
        return await client.request(
            "POST", RESEND, {"email": email}, {"X-Forwarded-For": client_address}
        )


async def test_resend_is_limited_per_client_address(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper()
    async with WebClient(gatekeeper) as client:
        for _ in range(10):
            email = new_applicant("nobody").email
            assert await client.post(RESEND, {"email": email}) == (200, {"sent": True})
        status, body = await client.post(RESEND, {"email": new_applicant("nobody").email})
        # Like sign-up and login: 429 with Retry-After once the client address is over.
        assert status == 429
        assert body["errcode"] == "GK_RATE_LIMITED"
        assert 0 < int(client.last_headers["Retry-After"]) <= 3600


async def test_one_confirmation_mail_per_recipient_per_window(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    # Behind a trusted proxy every ask can come from another client address, so only the
    # limit per recipient stands between the victim and a flood.
    gatekeeper = await start_gatekeeper(web={"trusted_proxies": ["127.0.0.0/8"]})
    victim = new_applicant("victim")
    assert (await sign_up(gatekeeper, victim))[0] == 201
    await smtp.wait_for(victim.email, "confirm")

    await pass_time(gatekeeper, 2 * 60_000)
    answers = await asyncio.gather(
        *(resend_from(f"198.51.100.{n}", gatekeeper, victim.email) for n in range(1, 31))
    )
    # Everyone gets the neutral answer, whether or not a mail went out.
    assert all(answer == (200, {"sent": True}) for answer in answers)
    await all_mail_sent(gatekeeper)
    assert len(smtp.to(victim.email)) == 1, "a resend within 5 minutes of the last mail"

    await pass_time(gatekeeper, 5 * 60_000)
    answers = await asyncio.gather(
        *(resend_from(f"203.0.113.{n}", gatekeeper, victim.email) for n in range(1, 11))
    )
    assert all(answer == (200, {"sent": True}) for answer in answers)
    await all_mail_sent(gatekeeper)
    assert len(smtp.to(victim.email)) == 2, "exactly one mail in the next window"
