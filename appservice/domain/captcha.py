"""Optional third-party CAPTCHA (hCaptcha or Cloudflare Turnstile), checked server-side.

Off by default: the self-hosted proof of work contacts nobody; this is for operators
who choose a provider.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gatekeeper.appservice.config import AntibotConfig

log = logging.getLogger("gatekeeper.captcha")

VERIFY_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Provider:
    verify_url: str
    response_field: str  # the form field the provider's widget fills in
    script_url: str
    widget_class: str
    origins: str  # for the Content-Security-Policy


PROVIDERS = {
    "hcaptcha": Provider(
        "https://api.hcaptcha.com/siteverify",
        "h-captcha-response",
        "https://js.hcaptcha.com/1/api.js",
        "h-captcha",
        "https://hcaptcha.com https://*.hcaptcha.com",
    ),
    "turnstile": Provider(
        "https://challenges.cloudflare.com/turnstile/v0/siteverify",
        "cf-turnstile-response",
        "https://challenges.cloudflare.com/turnstile/v0/api.js",
        "cf-turnstile",
        "https://challenges.cloudflare.com",
    ),
}


class Captcha:
    def __init__(self, config: AntibotConfig) -> None:
        self.config = config
        self.provider = PROVIDERS.get(config.captcha)

    async def verify(self, body: Mapping[str, Any], address: str) -> bool:
        """True when no provider is configured, or the provider accepts the answer."""
        if self.provider is None:
            return True
        answer = body.get(self.provider.response_field)
        if not isinstance(answer, str) or not answer:
            return False
        assert self.config.captcha_secret is not None
        form = {
            "secret": self.config.captcha_secret.get_secret_value(),
            "response": answer,
            "remoteip": address,
        }
        url = self.config.captcha_verify_url or self.provider.verify_url
        timeout = aiohttp.ClientTimeout(total=VERIFY_TIMEOUT_SECONDS)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=form) as response,
            ):
                verdict = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as error:
            # Fail closed: an unreachable provider lets nobody through unchecked.
            log.warning("The %s check failed: %s", self.config.captcha, type(error).__name__)
            return False
        return isinstance(verdict, dict) and verdict.get("success") is True
