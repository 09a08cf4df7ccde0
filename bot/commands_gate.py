"""The admin-room commands on who may sign up: invites, blocks, and closing the gate."""

from __future__ import annotations

from gatekeeper.appservice.domain.gate import BLOCK_KINDS, Gate
from gatekeeper.bot.commands import CommandContext, Reply, command
from gatekeeper.bot.options import expiry, parse_options, when


class GateCommands:
    def __init__(self, gate: Gate, prefix: str, public_base_url: str) -> None:
        self.gate = gate
        self.prefix = prefix
        self.public_base_url = public_base_url

    @command(
        "invite",
        args="[--uses N] [--expires 7d] [--note text]",
        help="make a sign-up link that skips approval",
    )
    async def invite(self, ctx: CommandContext) -> Reply:
        try:
            options = parse_options(ctx.args, {"uses": "1", "expires": "7d", "note": ""})
            uses = int(options["uses"])
            expires_at = expiry(options["expires"])
        except ValueError as error:
            return Reply(f"{error}. {ctx.usage}")
        if uses < 1:
            return Reply("--uses must be 1 or more.")
        invite, token = await self.gate.create_invite(ctx.sender, uses, expires_at, options["note"])
        link = f"{self.public_base_url}/sign-up?invite={token}"
        until = f", until {when(expires_at)}" if expires_at else ""
        return Reply(f"Invite {invite.id} ({uses} use{'s' if uses != 1 else ''}{until}): {link}")

    @command("invites", help="list the invites still usable")
    async def invites(self, ctx: CommandContext) -> Reply:
        found = await self.gate.invites()
        if not found:
            return Reply("No invites are open.")
        lines = ["Open invites:"]
        for invite in found:
            until = f", until {when(invite.expires_at)}" if invite.expires_at else ""
            note = f" — {invite.note}" if invite.note else ""
            lines.append(
                f"• {invite.id}: {invite.uses_left} left, {invite.uses} used{until}, "
                f"by {invite.created_by}{note}"
            )
        return Reply("\n".join(lines))

    @command("revoke", args="<invite>", help="end an invite")
    async def revoke(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        if await self.gate.revoke(ctx.args[0], ctx.sender):
            return Reply(f"Invite {ctx.args[0]} is revoked.")
        return Reply(f"There is no open invite {ctx.args[0]}.")

    @command(
        "block",
        args=f"<{'|'.join(BLOCK_KINDS)}> <value> [--expires 7d]",
        help="refuse matching sign-ups (username: a glob or /regex/)",
    )
    async def block(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) < 2:
            return Reply(ctx.usage)
        try:
            options = parse_options(ctx.args[2:], {"expires": ""})
            expires_at = expiry(options["expires"]) if options["expires"] else None
            block = await self.gate.add_block(ctx.args[0], ctx.args[1], ctx.sender, expires_at)
        except ValueError as error:
            return Reply(f"{error}. {ctx.usage}")
        until = f" until {when(expires_at)}" if expires_at else ""
        return Reply(f"Block {block.id}: {block.kind} {block.value}{until}.")

    @command("blocks", help="list the blocks in force")
    async def blocks(self, ctx: CommandContext) -> Reply:
        found = await self.gate.blocks()
        if not found:
            return Reply("No blocks are in force.")
        lines = ["Blocks in force:"]
        for block in found:
            until = f" until {when(block.expires_at)}" if block.expires_at else ""
            lines.append(f"• {block.id}: {block.kind} {block.value}{until} (by {block.created_by})")
        return Reply("\n".join(lines))

    @command("unblock", args="<id>", help="lift a block")
    async def unblock(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        if await self.gate.remove_block(ctx.args[0], ctx.sender):
            return Reply(f"Block {ctx.args[0]} is lifted.")
        return Reply(f"There is no block {ctx.args[0]}.")

    @command("close", args="[reason]", help="pause new sign-ups (invites still work)")
    async def close(self, ctx: CommandContext) -> Reply:
        reason = ctx.raw_args or "paused by the admins"
        await self.gate.close(ctx.sender, reason)
        return Reply(f"Sign-ups are closed: {reason}. Send {self.prefix}open to reopen.")

    @command("open", help="resume sign-ups")
    async def open(self, ctx: CommandContext) -> Reply:
        await self.gate.open(ctx.sender)
        return Reply("Sign-ups are open.")
