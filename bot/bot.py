"""The bot in the admin room: reads commands from events, checks the sender, answers."""

from __future__ import annotations

import html
import logging
import secrets
from datetime import UTC, datetime

from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import (
    Event,
    EventID,
    EventType,
    Membership,
    MemberStateEventContent,
    MessageEvent,
    MessageType,
    ReactionEvent,
    RoomAlias,
    RoomID,
    StateEvent,
    UserID,
)

from appservice.config import Config
from appservice.domain.decisions import Decisions
from appservice.domain.gate import BLOCK_KINDS, Gate
from appservice.domain.registration_request import RegistrationRequest, State
from appservice.domain.registrations import Outcome, Registrations, Result
from appservice.domain.signup import MAX_REASON_CHARS
from appservice.matrix_ids import user_id
from appservice.storage.bot_state import BotState
from appservice.timeutil import now_ms
from bot.admin_room import AdminRoom
from bot.commands import (
    BoundCommand,
    CommandContext,
    Reply,
    collect_commands,
    command,
    parse_command,
)
from bot.notices import (
    APPROVE_KEYS,
    REJECT_KEYS,
    age,
    content_of,
    describe,
    normalise_key,
    one_line,
    shown_email,
)
from bot.options import expiry, parse_options, when

log = logging.getLogger("gatekeeper.bot")

REFUSAL = "Sorry, only Gatekeeper admins can give me commands."
WELCOME = "Hello! I will post sign-up requests here for you to decide on. Send {prefix}help."


PAGE_SIZE = 10
DECISION_ANSWERS = {
    Outcome.CHANGED: "{verb} {id} ({user_id}).",
    Outcome.ALREADY: "{id} is already {state}.",
    Outcome.REFUSED: "{id} cannot be {verb_lower}: it is {state}.",
}


class AdminBot:
    def __init__(
        self,
        config: Config,
        intent: IntentAPI,
        state: BotState,
        registrations: Registrations,
        decisions: Decisions,
        gate: Gate,
    ) -> None:
        self.config = config
        self.intent = intent
        self.prefix = config.admin_room.command_prefix
        self.room = AdminRoom(config.admin_room, intent, state)
        self.registrations = registrations
        self.decisions = decisions
        self.gate = gate
        self.commands: dict[str, BoundCommand] = collect_commands(self)

    async def start(self) -> None:
        """Make sure the bot user exists with its name, and is in the admin room."""
        await self.intent.ensure_registered()
        await self.intent.set_displayname(self.config.appservice.bot_displayname)
        if await self.room.prepare():
            assert self.room.room_id is not None
            await self.send(self.room.room_id, Reply(WELCOME.format(prefix=self.prefix)))
        for room in self.config.registration.newcomer_rooms:
            await self._join_newcomer_room(room)

    async def _join_newcomer_room(self, room: str) -> None:
        """Without an admin token the bot invites newcomers, so it must be in their rooms."""
        try:
            # The setting holds IDs and aliases alike (both plain strings to mautrix).
            room_id_or_alias = RoomAlias(room) if room.startswith("#") else RoomID(room)
            await self.intent.join_room(room_id_or_alias, max_retries=0)
        except MatrixRequestError as error:
            log.warning(
                "Cannot join newcomer room %s (%s): invite %s",
                room,
                error.errcode,
                self.intent.mxid,
            )

    async def handle_event(self, event: Event) -> None:
        """Entry point for every event Synapse sends; one bad event never affects others."""
        try:
            if isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
                await self._on_membership(event)
            elif isinstance(event, MessageEvent) and event.type == EventType.ROOM_MESSAGE:
                await self._on_message(event)
            elif isinstance(event, ReactionEvent) and event.type == EventType.REACTION:
                await self._on_reaction(event)
        except Exception:
            log.exception("Failed to handle event %s", event.event_id)

    async def _on_membership(self, event: StateEvent) -> None:
        invited = (
            event.state_key == self.intent.mxid
            and isinstance(event.content, MemberStateEventContent)
            and event.content.membership == Membership.INVITE
        )
        if not invited:
            return
        if event.room_id == self.room.room_id:
            await self.room.join()
        elif event.room_id in self.config.registration.newcomer_rooms:
            await self._join_newcomer_room(event.room_id)

    async def _on_message(self, event: MessageEvent) -> None:
        if event.sender == self.intent.mxid or event.room_id != self.room.room_id:
            return
        content = event.content
        if content.msgtype != MessageType.TEXT or content.get_edit() is not None:
            return
        parsed = parse_command(content.body, self.prefix)
        if parsed is None:
            return
        reply = await self._run(
            parsed.name,
            CommandContext(
                event.sender, event.room_id, event.event_id, parsed.args, parsed.raw_args
            ),
        )
        await self.send(event.room_id, reply, in_reply_to=event.event_id)

    async def _on_reaction(self, event: ReactionEvent) -> None:
        if event.sender == self.intent.mxid or event.room_id != self.room.room_id:
            return
        relation = event.content.relates_to
        key = normalise_key(relation.key or "")
        if key not in APPROVE_KEYS + REJECT_KEYS or relation.event_id is None:
            return
        request = await self.registrations.by_notice(relation.event_id)
        if request is None:
            return
        if not await self.room.is_admin(event.sender):
            log.info("Ignored a decision by %s, who is not an admin", event.sender)
            return
        if key in APPROVE_KEYS:
            result = await self.decisions.approve(request.id, event.sender)
        else:
            result = await self.decisions.reject(request.id, event.sender, None)
        if result.outcome is Outcome.REFUSED and result.request is not None:
            await self.send(
                event.room_id,
                Reply(f"{request.id} cannot be decided any more: it is {result.request.state}."),
                in_reply_to=event.event_id,
            )

    async def _run(self, name: str, ctx: CommandContext) -> Reply:
        bound = self.commands.get(name)
        if bound is None:
            if not await self.room.is_admin(ctx.sender):
                return Reply(REFUSAL)
            return Reply(
                f"Unknown command {self.prefix}{name}. Send {self.prefix}help for the list."
            )
        if bound.spec.needs_admin and not await self.room.is_admin(ctx.sender):
            return Reply(REFUSAL)
        try:
            return await bound.handler(ctx)
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("Command %s failed (reference %s)", name, reference)
            return Reply(
                f"Something went wrong (reference {reference}); the details are in the log."
            )

    async def invite_newcomer(self, user_id: str, room: str) -> None:
        """Invite a new account to a room the operator lists for newcomers."""
        room_id = room
        if room.startswith("#"):
            room_id = (await self.intent.resolve_room_alias(RoomAlias(room))).room_id
        await self.intent.invite_user(RoomID(room_id), UserID(user_id))

    async def send(self, room_id: RoomID, reply: Reply, in_reply_to: EventID | None = None) -> None:
        content = content_of(reply)
        if in_reply_to is not None:
            content.set_reply(in_reply_to)
        await self.intent.send_message(room_id, content)

    def _decision_answer(self, result: Result, request_id: str, verb: str) -> Reply:
        if result.outcome is Outcome.NOT_FOUND or result.request is None:
            return Reply(f"There is no request {request_id}. {self.prefix}search finds one.")
        request = result.request
        return Reply(
            DECISION_ANSWERS[result.outcome].format(
                verb=verb,
                verb_lower=verb.lower(),
                id=request.id,
                state=request.state,
                user_id=request.user_id(self.config.homeserver.domain),
            )
        )

    @command("approve", args="<id>", help="approve a request: its account is created")
    async def approve(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(f"Usage: {self.prefix}approve <id>")
        result = await self.decisions.approve(ctx.args[0], ctx.sender)
        return self._decision_answer(result, ctx.args[0], "Approved")

    @command("reject", args="<id> [reason]", help="reject a request; the reason is mailed")
    async def reject(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(f"Usage: {self.prefix}reject <id> [reason]")
        reason = ctx.raw_args[len(ctx.args[0]) :].strip()
        result = await self.decisions.reject(ctx.args[0], ctx.sender, reason)
        return self._decision_answer(result, ctx.args[0], "Rejected")

    @command("pending", args="[page]", help="list the requests waiting for a decision")
    async def pending(self, ctx: CommandContext) -> Reply:
        page = int(ctx.args[0]) if ctx.args and ctx.args[0].isdigit() else 1
        total = await self.registrations.count_in_state(State.PENDING)
        if total == 0:
            return Reply("No requests are waiting for a decision.")
        pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
        page = min(max(page, 1), pages)
        requests = await self.registrations.in_state(
            State.PENDING, PAGE_SIZE, (page - 1) * PAGE_SIZE
        )
        lines = [f"Pending requests, page {page} of {pages} ({total} in all):"]
        lines += [self._summary(r) for r in requests]
        if page < pages:
            lines.append(f"Next: {self.prefix}pending {page + 1}")
        return Reply("\n".join(lines))

    @command("show", args="<id>", help="show a request and its history")
    async def show(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(f"Usage: {self.prefix}show <id>")
        request = await self.registrations.get(ctx.args[0])
        if request is None:
            return Reply(f"There is no request {ctx.args[0]}. {self.prefix}search finds one.")
        # The whole reason (sign-ups keep at most MAX_REASON_CHARS), still on one line.
        notice = describe(request, self.config, self.prefix, reason_chars=MAX_REASON_CHARS)
        lines = [notice.text, f"State: {request.state}"]
        lines.append("History:")
        for entry in await self.registrations.history(request.id):
            when = datetime.fromtimestamp(entry.at / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
            change = f"{entry.from_state or 'new'} → {entry.to_state}"
            why = f" ({one_line(entry.reason)})" if entry.reason else ""
            lines.append(f"• {when} {change} by {entry.actor}{why}")
        return Reply("\n".join(lines))

    @command("search", args="<text>", help="find requests by name, email or ID")
    async def search(self, ctx: CommandContext) -> Reply:
        if not ctx.raw_args:
            return Reply(f"Usage: {self.prefix}search <text>")
        found = await self.registrations.search(ctx.raw_args)
        if not found:
            return Reply(f"No request matches “{ctx.raw_args}”.")
        return Reply(
            "\n".join([f"Requests matching “{ctx.raw_args}”:"] + [self._summary(r) for r in found])
        )

    def _summary(self, request: RegistrationRequest) -> str:
        email = shown_email(request.email, self.config)
        who = user_id(request.localpart, self.config.homeserver.domain)
        return f"• {request.id} {who} — {email} — {request.state} — {age(request.created_at)}"

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
            return Reply(
                f"{error}. Usage: {self.prefix}invite [--uses N] [--expires 7d] [--note text]"
            )
        if uses < 1:
            return Reply("--uses must be 1 or more.")
        invite, token = await self.gate.create_invite(ctx.sender, uses, expires_at, options["note"])
        link = f"{self.config.web.public_base_url}/sign-up?invite={token}"
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
            return Reply(f"Usage: {self.prefix}revoke <invite>")
        if await self.gate.revoke(ctx.args[0], ctx.sender):
            return Reply(f"Invite {ctx.args[0]} is revoked.")
        return Reply(f"There is no open invite {ctx.args[0]}.")

    @command(
        "block",
        args="<email-domain|email|ip|username> <value> [--expires 7d]",
        help="refuse matching sign-ups (username: a glob or /regex/)",
    )
    async def block(self, ctx: CommandContext) -> Reply:
        usage = f"Usage: {self.prefix}block <{'|'.join(BLOCK_KINDS)}> <value> [--expires 7d]"
        if len(ctx.args) < 2:
            return Reply(usage)
        try:
            options = parse_options(ctx.args[2:], {"expires": ""})
            expires_at = expiry(options["expires"]) if options["expires"] else None
            block = await self.gate.add_block(ctx.args[0], ctx.args[1], ctx.sender, expires_at)
        except ValueError as error:
            return Reply(f"{error}. {usage}")
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
            return Reply(f"Usage: {self.prefix}unblock <id>")
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

    @command("stats", help="requests and decisions this week and month")
    async def stats(self, ctx: CommandContext) -> Reply:
        lines = []
        for label, days in (("This week", 7), ("This month", 30)):
            figures = await self.registrations.statistics(now_ms() - days * 86_400_000)
            states = ", ".join(f"{n} {s}" for s, n in sorted(figures.by_state.items())) or "none"
            median = (
                f"{figures.median_decision_ms / 3_600_000:.1f} h"
                if figures.median_decision_ms is not None
                else "no decisions"
            )
            admins = ", ".join(f"{a} {n}" for a, n in figures.approvals_by.items()) or "none"
            lines += [
                f"{label}: {figures.total} requests ({states})",
                f"  median time to decision: {median}; approvals by: {admins}",
            ]
        return Reply("\n".join(lines))

    @command("audit", args="[n]", help="the latest decisions and admin actions")
    async def audit(self, ctx: CommandContext) -> Reply:
        count = int(ctx.args[0]) if ctx.args and ctx.args[0].isdigit() else 20
        entries = await self.gate.recent_audit(min(count, 200))
        if not entries:
            return Reply("Nothing in the audit log yet.")
        return Reply(
            "\n".join(
                ["Audit log, newest first:"]
                + [f"• {when(at)} {actor}: {what}" for at, actor, what in entries]
            )
        )

    @command("help", help="show the commands you can give")
    async def help(self, ctx: CommandContext) -> Reply:
        is_admin = await self.room.is_admin(ctx.sender)
        allowed = [c.spec for c in self.commands.values() if is_admin or not c.spec.needs_admin]
        allowed.sort(key=lambda spec: spec.name)
        lines = [f"{spec.usage(self.prefix)} — {spec.help}" for spec in allowed]
        items = "".join(
            f"<li><code>{html.escape(spec.usage(self.prefix))}</code> — "
            f"{html.escape(spec.help)}</li>"
            for spec in allowed
        )
        return Reply(
            "Gatekeeper commands:\n" + "\n".join(lines),
            f"<p>Gatekeeper commands:</p><ul>{items}</ul>",
        )
