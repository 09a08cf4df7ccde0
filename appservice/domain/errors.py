"""Why the domain refuses what a user sent; the web turns each into its answer."""

from __future__ import annotations


class SignUpRefused(Exception):
    """Refused for a reason the applicant is not told (block, anti-bot): one neutral answer."""


class ProofOfWorkFailed(SignUpRefused):
    """The proof of work is missing or not a valid, fresh solution. Unlike the other
    refusals the API names it (field `altcha`): every client must solve one anyway."""


class SignUpsClosed(Exception):
    """The admins paused sign-ups; the reason is shown."""


class InviteInvalid(Exception):
    """The invite link is unknown, used up, expired or revoked (checked before any mail)."""


class FieldErrors(Exception):
    """Bad input, by field (the API's camelCase names); nothing has been written."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(", ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
