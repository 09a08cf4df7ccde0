"""The admin-room commands on accounts after approval: suspend, deactivate, whois.

`!deactivate` cannot be undone, so it only says what would happen and gives a code; the
same admin sends `!confirm <code>` within CONFIRM_SECONDS to go ahead. Other messages
meanwhile cancel nothing; an unconfirmed code just expires. The codes live in this
process's memory: after a restart (or a hand-over to another process) the admin asks again.
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from mautrix.types import UserID

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.moderation import (
    Moderation,
    ModerationEntry,
    ModerationError,
    Problem,
    Target,
    Whois,
)
from gatekeeper.appservice.domain.registration_request import REQUEST_ID_ALPHABET
from gatekeeper.bot.commands import CommandContext, Reply, command
from gatekeeper.bot.notices import one_line, shown_email

CONFIRM_SECONDS = 300.0
CODE_LENGTH = 6
ERASE_FLAG = "--erase"


@dataclass(frozen=True)
class PendingDeactivation:
    actor: str
    user_id: str
    erase: bool
    reason: str | None
    expires_at: float


def when(ms: int | None) -> str:
    if ms is None:
        return "at an unknown time"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _rest(ctx: CommandContext) -> str:
    """The text after the first argument (the user), as typed."""
    return ctx.raw_args[len(ctx.args[0]) :].strip()


class ModerationCommands:
    def __init__(
        self,
        config: Config,
        moderation: Moderation,
        is_admin: Callable[[UserID], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.prefix = config.admin_room.command_prefix
        self.moderation = moderation
        self.is_admin = is_admin
        self.clock = clock
        self.pending: dict[str, PendingDeactivation] = {}

    async def _target(self, text: str) -> Target:
        """Moderation's target, and never an admin of the room (by power level too)."""
        target = await self.moderation.target(text)
        if await self.is_admin(UserID(target.user_id)):
            raise ModerationError(
                Problem.PROTECTED,
                f"{target.user_id} is an admin of this room: I do not moderate admins.",
            )
        return target

    def _from(self, target: Target) -> str:
        return f" (request {target.request.id})" if target.request is not None else ""

    @command("suspend", args="<user> [reason]", help="suspend an account: it can read, not send")
    async def suspend(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(ctx.usage)
        try:
            target = await self._target(ctx.args[0])
            await self.moderation.suspend(target, ctx.sender, _rest(ctx) or None)
        except ModerationError as error:
            return Reply(error.message)
        return Reply(
            f"Suspended {target.user_id}{self._from(target)}: they can still read, but not send. "
            f"{self.prefix}unsuspend {target.user_id} lifts it."
        )

    @command(
        "unsuspend", args="<user> [reason]", help="lift a suspension: the account can send again"
    )
    async def unsuspend(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(ctx.usage)
        try:
            target = await self._target(ctx.args[0])
            await self.moderation.unsuspend(target, ctx.sender, _rest(ctx) or None)
        except ModerationError as error:
            return Reply(error.message)
        return Reply(f"Unsuspended {target.user_id}{self._from(target)}: they can send again.")

    @command(
        "deactivate",
        args=f"<user> [{ERASE_FLAG}] [reason]",
        help="deactivate an account for good (asks you to confirm)",
    )
    async def deactivate(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(ctx.usage)
        words = _rest(ctx).split()
        erase = ERASE_FLAG in words
        reason = " ".join(word for word in words if word != ERASE_FLAG) or None
        try:
            target = await self._target(ctx.args[0])
        except ModerationError as error:
            return Reply(error.message)
        self._forget_expired()
        code = "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(CODE_LENGTH))
        self.pending[code] = PendingDeactivation(
            ctx.sender, target.user_id, erase, reason, self.clock() + CONFIRM_SECONDS
        )
        again = " It is deactivated already: this does it again." if target.deactivated else ""
        gatekeeper = (
            " Their Gatekeeper sessions end, and they can no longer log in to Gatekeeper's site."
            if target.request is not None
            else ""
        )
        erasing = (
            f" With {ERASE_FLAG}, {self.moderation.backend_name} also erases them: their "
            "profile goes, and their messages show as deleted to anyone who was not in the "
            "room when they were sent."
            if erase
            else ""
        )
        minutes = int(CONFIRM_SECONDS // 60)
        return Reply(
            f"⚠️ Deactivating {target.user_id}{self._from(target)} cannot be undone: they can "
            f"no longer log in to Matrix.{gatekeeper}{erasing}{again}\n"
            f"To go ahead, send {self.prefix}confirm {code} within {minutes} minutes. "
            "Until then nothing changes."
        )

    @command("confirm", args="<code>", help="go ahead with a deactivation you asked for")
    async def confirm(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        self._forget_expired()
        code = ctx.args[0].lower()
        pending = self.pending.get(code)
        if pending is None:
            return Reply(
                f"No deactivation waits for the code {one_line(ctx.args[0], 50)} (codes last "
                f"{int(CONFIRM_SECONDS // 60)} minutes). Send {self.prefix}deactivate again."
            )
        if pending.actor != ctx.sender:
            return Reply(f"Only {pending.actor}, who asked for this deactivation, can confirm it.")
        del self.pending[code]
        try:
            # Again: the room's admins or the request may have changed meanwhile.
            target = await self._target(pending.user_id)
            await self.moderation.deactivate(target, ctx.sender, pending.erase, pending.reason)
        except ModerationError as error:
            return Reply(error.message)
        erased = " and erased" if pending.erase else ""
        sessions = " Their Gatekeeper sessions are ended." if target.request is not None else ""
        return Reply(f"Deactivated{erased} {target.user_id}{self._from(target)}.{sessions}")

    def _forget_expired(self) -> None:
        now = self.clock()
        for code in [c for c, p in self.pending.items() if p.expires_at <= now]:
            del self.pending[code]

    @command("whois", args="<user>", help="an account's request, approver, email, 2FA and state")
    async def whois(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        try:
            found = await self.moderation.whois(ctx.args[0])
        except ModerationError as error:
            return Reply(error.message)
        lines = whois_lines(found, self.config)
        escaped = [html.escape(line) for line in lines]
        return Reply("\n".join(lines), f"<b>{escaped[0]}</b><br>" + "<br>".join(escaped[1:]))


def whois_lines(found: Whois, config: Config) -> list[str]:
    lines = [found.user_id]
    request = found.request
    if request is None:
        lines.append("Not made through Gatekeeper: no sign-up request.")
    else:
        lines += [
            f"Request: {request.id} ({request.state}), asked {when(request.created_at)}",
            f"Approved by {request.decided_by or 'an admin'} on {when(request.decided_at)}",
            f"Email: {shown_email(request.email, config)}",
            f"2FA: {'on' if found.two_factor else 'off'}",
        ]
    status = found.status
    if status is None:
        lines.append(f"Account: unknown ({found.status_problem})")
    elif not status.exists:
        lines.append("Account: none on the homeserver")
    else:
        lines.append(
            f"Suspended: {'yes' if status.suspended else 'no'} · "
            f"deactivated: {'yes' if status.deactivated else 'no'}"
        )
    lines.append(f"Last moderation: {_entry(found.last_action)}")
    if found.refusal is not None:
        lines.append(f"Moderation commands: refused. {found.refusal}")
    return lines


def _entry(entry: ModerationEntry | None) -> str:
    if entry is None:
        return "none"
    action = f"{entry.action} (erase)" if entry.erase else entry.action
    reason = f" ({one_line(entry.reason, 200)})" if entry.reason else ""
    failed = f" — FAILED: {one_line(entry.error or '', 200)}" if entry.outcome == "failed" else ""
    return f"{action} by {entry.actor} on {when(entry.at)}{reason}{failed}"
