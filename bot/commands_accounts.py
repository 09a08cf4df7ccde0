"""The admin-room commands on people's Gatekeeper logins: `!reset-2fa`."""

from __future__ import annotations

from gatekeeper.appservice.domain.two_factor import TwoFactorResets
from gatekeeper.bot.commands import CommandContext, Reply, command
from gatekeeper.bot.notices import NO_NAME_YET, one_line


class AccountCommands:
    def __init__(self, resets: TwoFactorResets, domain: str) -> None:
        self.resets = resets
        self.domain = domain

    @command(
        "reset-2fa",
        args="<user or request id> [reason]",
        help="turn off someone's two-factor login, once you have checked it is them asking",
    )
    async def reset_2fa(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(ctx.usage)
        request = await self.resets.find(ctx.args[0])
        if request is None:
            return Reply(
                f"No request or account of {one_line(ctx.args[0], 100)} can log in to "
                f"Gatekeeper. Give its request ID, @name:{self.domain} or just the name."
            )
        who = f"{request.shown_user_id(self.domain, NO_NAME_YET)} (request {request.id})"
        reason = ctx.raw_args[len(ctx.args[0]) :].strip() or None
        if not await self.resets.reset(request, ctx.sender, reason):
            return Reply(f"{who} has no two-factor login; nothing changed.")
        return Reply(
            f"Turned off the two-factor login of {who}, with its recovery codes. Their "
            "Gatekeeper sessions ended and they got an email; they log in with their "
            "password alone now, and may set it up again in their settings."
        )
