"""The bot in the admin room: reads commands from events, checks the sender, answers."""

from __future__ import annotations

import html
import logging
import secrets
from dataclasses import replace

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

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.domain.registrations import Outcome
from gatekeeper.appservice.storage.bot_state import BotState
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.bot.admin_room import AdminRoom
from gatekeeper.bot.commands import (
    BoundCommand,
    CommandContext,
    Reply,
    collect_commands,
    command,
    parse_command,
)
from gatekeeper.bot.commands_gate import GateCommands
from gatekeeper.bot.commands_reports import ReportCommands
from gatekeeper.bot.commands_requests import RequestCommands
from gatekeeper.bot.notices import APPROVE_KEYS, REJECT_KEYS, content_of, normalise_key

log = logging.getLogger("gatekeeper.bot")

REFUSAL = "Sorry, only Gatekeeper admins can give me commands."
WELCOME = "Hello! I will post sign-up requests here for you to decide on. Send {prefix}help."


class AdminBot:
    def __init__(
        self,
        config: Config,
        intent: IntentAPI,
        state: BotState,
        store: RegistrationStore,
        decisions: Decisions,
        gate: Gate,
    ) -> None:
        self.config = config
        self.intent = intent
        self.prefix = config.admin_room.command_prefix
        self.room = AdminRoom(config.admin_room, intent, state)
        self.store = store
        self.decisions = decisions
        self.commands: dict[str, BoundCommand] = collect_commands(
            self,
            RequestCommands(config, store, decisions),
            GateCommands(gate, self.prefix, config.web.public_base_url),
            ReportCommands(store, gate),
        )

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
        request = await self.store.by_notice(relation.event_id)
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
        usage = f"Usage: {bound.spec.usage(self.prefix)}"
        try:
            return await bound.handler(replace(ctx, usage=usage))
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


# Every class whose @command methods AdminBot collects: docs/generate.py documents them.
COMMAND_CLASSES: tuple[type, ...] = (AdminBot, RequestCommands, GateCommands, ReportCommands)
