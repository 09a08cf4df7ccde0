"""Moderation after approval: suspend, unsuspend and deactivate accounts, and `whois`.

The admin room (`bot/commands_moderation.py`) and the admin API (`web/app.py`) both come
here. Who may be moderated:

- users of `homeserver.domain` only, given as `@ann:domain` or as the bare `ann`;
- never Gatekeeper's bot, its own server admin user (`homeserver.admin_user`) or the
  admins of `admin_room.admins` (the room adds those with the admins' power level);
- by default only accounts that came through Gatekeeper (a request whose account was
  made, with that Matrix ID); `admin_room.moderate_all_local_users` allows every local user.

The homeserver is asked first; Gatekeeper's records change only once it said yes. Each
call to the homeserver writes one `account_moderation` row (migration 009): outcome
`done`, or `failed` with the homeserver's answer (or that it did not answer). A refusal
before that (out of scope, protected, not a local user) changes nothing and writes no row.

Deactivating an account that came through Gatekeeper also moves its request to
`deactivated` (through `Registrations`, the only writer of a request's state), which ends
its web logins (`LOGIN_STATES`), and ends its sessions and remembered devices.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

from mautrix.util.async_db import Database
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Registrations
from gatekeeper.appservice.homeserver.account_backend import (
    AccountBackend,
    AccountStatus,
    HomeserverUnavailable,
    ProvisioningRefused,
)
from gatekeeper.appservice.matrix_ids import MAX_USER_ID_BYTES, user_id
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.storage.sessions import Sessions
from gatekeeper.appservice.storage.totp import TotpStore
from gatekeeper.appservice.timeutil import now_ms

log = logging.getLogger("gatekeeper.moderation")

# A localpart as the user ID grammar allows it, historical ones included: printable ASCII
# but the colon. The homeserver decides whether such an account exists.
LOCALPART_TYPED_RE = re.compile(r"^[!-9;-~]+$")
# The requests whose Matrix ID is an account Gatekeeper made.
ACCOUNT_STATES = (State.ACTIVE, State.DEACTIVATED)
# Homeserver answers quoted in an answer or an audit row are capped.
ERROR_CHARS = 300


class Action(enum.StrEnum):
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"
    DEACTIVATE = "deactivate"


class Outcome(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"


class Problem(enum.Enum):
    """Why nothing changed; the admin API answers each with its own HTTP status."""

    BAD_USER_ID = "bad-user-id"
    NOT_LOCAL = "not-local"
    PROTECTED = "protected"
    OUT_OF_SCOPE = "out-of-scope"
    NO_ACCOUNT = "no-account"
    DEACTIVATED = "deactivated"
    UNAVAILABLE = "unavailable"
    REFUSED = "refused"


class ModerationError(Exception):
    """Nothing changed; `message` says why, in words fit for the admin room."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


@dataclass(frozen=True)
class Target:
    """A local user to moderate, and the request their account came from (None: not
    made through Gatekeeper)."""

    user_id: str
    request: RegistrationRequest | None

    @property
    def deactivated(self) -> bool:
        return self.request is not None and self.request.state is State.DEACTIVATED


@dataclass(frozen=True)
class ModerationEntry:
    """One row of `account_moderation`."""

    user_id: str
    request_id: str | None
    at: int
    actor: str
    action: str
    erase: bool
    reason: str | None
    outcome: str
    error: str | None


@dataclass(frozen=True)
class Whois:
    user_id: str
    request: RegistrationRequest | None
    two_factor: bool | None  # None: no request, so no Gatekeeper login either
    status: AccountStatus | None  # None: the homeserver did not tell (see status_problem)
    status_problem: str | None
    last_action: ModerationEntry | None
    # Why the moderation commands would refuse this user; None if they would act.
    refusal: str | None


class Moderation:
    def __init__(
        self,
        config: Config,
        db: Database,
        store: RegistrationStore,
        registrations: Registrations,
        backend: AccountBackend,
        sessions: Sessions,
        totp: TotpStore,
    ) -> None:
        self.config = config
        self.domain = config.homeserver.domain
        self.db = db
        self.store = store
        self.registrations = registrations
        self.backend = backend
        self.sessions = sessions
        self.totp = totp
        # What the answers call the homeserver's account API.
        self.backend_name = "MAS" if config.homeserver.mas is not None else "Synapse"

    # --- who ---------------------------------------------------------------------------

    def parse_user(self, text: str) -> str:
        """`@ann:domain` or `ann` → `@ann:domain`; a user of another server is refused."""
        typed = text.strip()
        if typed.startswith("@"):
            localpart, colon, domain = typed[1:].partition(":")
            if not colon or not domain:
                raise ModerationError(
                    Problem.BAD_USER_ID, f"“{typed}” is not a user ID (@name:{self.domain})."
                )
        else:
            localpart, domain = typed, self.domain
        if not LOCALPART_TYPED_RE.match(localpart) or len(typed.encode()) > MAX_USER_ID_BYTES:
            raise ModerationError(
                Problem.BAD_USER_ID,
                f"“{typed[:100]}” is not a user ID: give @name:{self.domain} or just the name.",
            )
        if domain != self.domain:
            raise ModerationError(
                Problem.NOT_LOCAL,
                f"@{localpart}:{domain} is not a user of {self.domain}; "
                "I only moderate accounts of this homeserver.",
            )
        return user_id(localpart, domain)

    def protection(self, matrix_id: str) -> str | None:
        """Why this user is never moderated, or None."""
        if matrix_id == self.config.bot_user_id:
            return f"{matrix_id} is Gatekeeper's bot: I do not moderate myself."
        if matrix_id == user_id(self.config.homeserver.admin_user, self.domain):
            return (
                f"{matrix_id} is Gatekeeper's own server admin user (homeserver.admin_user): "
                "Gatekeeper needs it."
            )
        if matrix_id in self.config.admin_room.admins:
            return (
                f"{matrix_id} is a Gatekeeper admin (admin_room.admins): "
                "take them off that list first."
            )
        return None

    def _scope_refusal(self, target: Target) -> str | None:
        if target.request is None and not self.config.admin_room.moderate_all_local_users:
            return (
                f"{target.user_id} did not sign up through Gatekeeper, so I leave that account "
                "alone (admin_room.moderate_all_local_users is false)."
            )
        return None

    async def target(self, text: str) -> Target:
        """The user `text` names, if the moderation commands may act on them."""
        matrix_id = self.parse_user(text)
        protected = self.protection(matrix_id)
        if protected is not None:
            raise ModerationError(Problem.PROTECTED, protected)
        target = Target(matrix_id, await self.request_of(matrix_id))
        refusal = self._scope_refusal(target)
        if refusal is not None:
            raise ModerationError(Problem.OUT_OF_SCOPE, refusal)
        return target

    async def request_of(self, matrix_id: str) -> RegistrationRequest | None:
        """The request whose account this is, if Gatekeeper made it."""
        rows = await self.db.fetch(
            "SELECT * FROM registration_request WHERE matrix_user_id=$1 ORDER BY created_at DESC",
            matrix_id,
        )
        for row in rows:
            request = RegistrationRequest.from_row(row)
            if request.state in ACCOUNT_STATES:
                return request
        return None

    # --- changes -----------------------------------------------------------------------

    async def suspend(self, target: Target, actor: str, reason: str | None = None) -> None:
        """Synapse's suspension (MAS's lock): the account can read, not send."""
        await self._change(
            target,
            actor,
            Action.SUSPEND,
            reason,
            lambda: self.backend.set_suspended(target.user_id, True),
        )

    async def unsuspend(self, target: Target, actor: str, reason: str | None = None) -> None:
        await self._change(
            target,
            actor,
            Action.UNSUSPEND,
            reason,
            lambda: self.backend.set_suspended(target.user_id, False),
        )

    async def deactivate(
        self, target: Target, actor: str, erase: bool, reason: str | None = None
    ) -> None:
        """Deactivate on the homeserver; then, for an account Gatekeeper made, the request
        becomes deactivated (with the audit row, in one transaction) and its web sessions
        and remembered devices end. Repeating it (e.g. to erase after all) is allowed."""
        await self._call_backend(
            target,
            actor,
            Action.DEACTIVATE,
            reason,
            lambda: self.backend.deactivate(target.user_id, erase),
            erase,
        )
        request = target.request
        if request is None:
            await self._record(self.db, target, actor, Action.DEACTIVATE, erase, reason)
            return

        async def record(conn: LoggingConnection, _: RegistrationRequest) -> None:
            await self._record(conn, target, actor, Action.DEACTIVATE, erase, reason)

        result = await self.registrations.deactivate(request.id, actor, reason, after=record)
        if not result.changed:
            # Deactivated already (a repeat): the state's audit row exists, this one not yet.
            await self._record(self.db, target, actor, Action.DEACTIVATE, erase, reason)
        await self.sessions.end_all_others(request.id, None)
        log.info(
            "%s deactivated %s (request %s, erase %s)", actor, target.user_id, request.id, erase
        )

    async def _change(
        self,
        target: Target,
        actor: str,
        action: Action,
        reason: str | None,
        call: Callable[[], Awaitable[None]],
    ) -> None:
        if target.deactivated:
            raise ModerationError(
                Problem.DEACTIVATED,
                f"{target.user_id} is deactivated; there is nothing to {action} any more.",
            )
        await self._call_backend(target, actor, action, reason, call)
        await self._record(self.db, target, actor, action, False, reason)
        log.info("%s: %s %s", actor, action, target.user_id)

    async def _call_backend(
        self,
        target: Target,
        actor: str,
        action: Action,
        reason: str | None,
        call: Callable[[], Awaitable[None]],
        erase: bool = False,
    ) -> None:
        """Make the change on the homeserver; if it fails, a `failed` row and the answer."""
        try:
            await call()
        except HomeserverUnavailable as error:
            log.warning("Could not %s %s: %s", action, target.user_id, error)
            await self._record(
                self.db, target, actor, action, erase, reason, Outcome.FAILED, str(error)
            )
            raise ModerationError(
                Problem.UNAVAILABLE,
                f"{self.backend_name} did not answer; nothing is recorded as done. "
                "Try again in a moment: repeating it is safe.",
            ) from None
        except ProvisioningRefused as error:
            log.warning("Could not %s %s: %s", action, target.user_id, error)
            await self._record(
                self.db, target, actor, action, erase, reason, Outcome.FAILED, str(error)
            )
            if error.status == 404 and error.errcode == "M_NOT_FOUND":
                raise ModerationError(
                    Problem.NO_ACCOUNT,
                    f"{self.backend_name} has no account {target.user_id}; nothing changed.",
                ) from None
            raise ModerationError(
                Problem.REFUSED,
                f"{self.backend_name} refused: {_capped(str(error))}. Nothing changed.",
            ) from None

    async def _record(
        self,
        conn: LoggingConnection | Database,
        target: Target,
        actor: str,
        action: Action,
        erase: bool,
        reason: str | None,
        outcome: Outcome = Outcome.DONE,
        error: str | None = None,
    ) -> None:
        await conn.execute(
            "INSERT INTO account_moderation (user_id, request_id, at, actor, action, erase,"
            " reason, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            target.user_id,
            target.request.id if target.request is not None else None,
            now_ms(),
            actor,
            action.value,
            erase,
            reason or None,
            outcome.value,
            _capped(error) if error is not None else None,
        )

    # --- reading -----------------------------------------------------------------------

    async def history(self, matrix_id: str, limit: int = 20) -> list[ModerationEntry]:
        """The user's moderation rows, newest first."""
        rows = await self.db.fetch(
            "SELECT * FROM account_moderation WHERE user_id=$1 ORDER BY at DESC, action LIMIT $2",
            matrix_id,
            limit,
        )
        names = [f.name for f in fields(ModerationEntry)]
        return [
            ModerationEntry(**{**{name: row[name] for name in names}, "erase": bool(row["erase"])})
            for row in rows
        ]

    async def whois(self, text: str) -> Whois:
        """What Gatekeeper and the homeserver know of a local user (any local user: it
        changes nothing)."""
        matrix_id = self.parse_user(text)
        request = await self.request_of(matrix_id)
        two_factor = await self.totp.is_enabled(request.id) if request is not None else None
        status: AccountStatus | None = None
        problem = None
        try:
            status = await self.backend.account_status(matrix_id)
        except HomeserverUnavailable as error:
            log.warning("Could not look up %s: %s", matrix_id, error)
            problem = f"{self.backend_name} did not answer"
        except ProvisioningRefused as error:
            log.warning("Could not look up %s: %s", matrix_id, error)
            problem = f"{self.backend_name} refused: {_capped(str(error))}"
        history = await self.history(matrix_id, limit=1)
        target = Target(matrix_id, request)
        return Whois(
            user_id=matrix_id,
            request=request,
            two_factor=two_factor,
            status=status,
            status_problem=problem,
            last_action=history[0] if history else None,
            refusal=self.protection(matrix_id) or self._scope_refusal(target),
        )


def _capped(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 1] + "…"
