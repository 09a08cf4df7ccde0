"""Where accounts are made and changed: Synapse itself, or the matrix-authentication-service
(MAS) a Synapse delegates its accounts to. One interface, one implementation per backend
(`synapse_admin.SynapseAdmin`, `mas_admin.MasAdmin`), chosen at start-up by the config.

Every call either returns a value or raises one of three exceptions: retry later
(HomeserverUnavailable), refused for good (ProvisioningRefused), or the name is someone
else's (AccountTaken). Their messages name the call and the answer, never a secret.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class HomeserverUnavailable(Exception):
    """The backend did not answer usefully (connection, timeout, 5xx, 429): retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProvisioningRefused(Exception):
    """The backend refused for good (a 4xx); `errcode` is the backend's, or a GK_* of ours."""

    def __init__(self, errcode: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.status = status


class AccountTaken(ProvisioningRefused):
    """The user ID exists and is not the one an earlier attempt of ours made."""


class Availability(enum.Enum):
    AVAILABLE = "available"
    TAKEN = "taken"
    INVALID = "invalid"
    RESERVED = "reserved"  # in an appservice's exclusive namespace, or Gatekeeper's own


@dataclass(frozen=True)
class AccountStatus:
    """What the backend says of an account, for `!whois`."""

    exists: bool
    suspended: bool = False  # Synapse's suspension, MAS's lock
    deactivated: bool = False


@dataclass(frozen=True)
class NewAccount:
    """An account to make. `password` None makes it without a usable password (the person
    sets one later); `approved_at_ms` dates the approval, so that an account an earlier
    attempt made can be told from someone else's (see `create_account`)."""

    localpart: str
    password: str | None
    displayname: str | None
    email: str | None
    approved_at_ms: int


class AccountBackend(Protocol):
    """The account operations Gatekeeper needs; `start` before use, `close` after."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def user_id(self, localpart: str) -> str: ...

    @property
    def can_join_users(self) -> bool:
        """Whether `join_room` works here (Synapse); else (MAS) newcomers are only invited,
        by the bot."""
        ...

    async def username_available(self, localpart: str) -> Availability: ...

    async def create_account(self, account: NewAccount) -> str:
        """Create the account, or adopt the one an earlier attempt of ours made (its answer
        lost in a crash); return its user ID. AccountTaken if it is someone else's."""
        ...

    async def set_password(self, user_id: str, password: str, logout_devices: bool) -> None: ...

    async def set_email(self, user_id: str, email: str) -> None:
        """Make `email` the account's address (the old one goes); safe to repeat."""
        ...

    async def join_room(self, user_id: str, room_id_or_alias: str) -> None: ...

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        """Synapse's suspension (the account reads but cannot send), MAS's lock."""
        ...

    async def deactivate(self, user_id: str, erase: bool) -> None:
        """Deactivate for good; `erase` also asks the homeserver to forget what they sent."""
        ...

    async def account_status(self, user_id: str) -> AccountStatus: ...
