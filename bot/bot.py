"""The bot in the admin room: reads commands from events, checks the sender, answers."""

from __future__ import annotations

import contextlib
import html
import logging
import secrets
import time
from dataclasses import replace

from mautrix.appservice import IntentAPI
from mautrix.errors import (
    IntentError,
    MatrixRequestError,
    MForbidden,
    MNotFound,
    SessionNotFound,
)
from mautrix.types import (
    EncryptedEvent,
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
from mautrix.util import background_task

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.domain.moderation import Moderation
from gatekeeper.appservice.domain.registrations import Outcome
from gatekeeper.appservice.domain.two_factor import TwoFactorResets
from gatekeeper.appservice.homeserver.account_backend import ProvisioningRefused
from gatekeeper.appservice.homeserver.encryption import BotEncryption, RoomMessages
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
from gatekeeper.bot.commands_accounts import AccountCommands
from gatekeeper.bot.commands_gate import GateCommands
from gatekeeper.bot.commands_moderation import ModerationCommands
from gatekeeper.bot.commands_reports import ReportCommands
from gatekeeper.bot.commands_requests import RequestCommands
from gatekeeper.bot.notices import APPROVE_KEYS, REJECT_KEYS, content_of, normalise_key

log = logging.getLogger("gatekeeper.bot")

REFUSAL = "Sorry, only Gatekeeper admins can give me commands."
WELCOME = "Hello! I will post sign-up requests here for you to decide on. Send {prefix}help."
UNREADABLE = "I could not decrypt your message. Please send it again."
DEAF = (
    "This room is end-to-end encrypted, but Gatekeeper cannot read or write end-to-end "
    "encrypted messages here: {cause}. Until that is fixed I cannot see your commands."
)
# One "could not decrypt" answer per sender in this time; the log has every failure.
UNREADABLE_ANSWER_SECONDS = 300.0


class AdminBot:
    def __init__(
        self,
        config: Config,
        intent: IntentAPI,
        state: BotState,
        store: RegistrationStore,
        decisions: Decisions,
        gate: Gate,
        moderation: Moderation,
        two_factor: TwoFactorResets,
        messages: RoomMessages,
        encryption: BotEncryption | None,
        encryption_missing: str | None,
    ) -> None:
        """`encryption` is None when it is off or cannot work; `encryption_missing` names
        the cause when it cannot."""
        self.config = config
        self.intent = intent
        self.prefix = config.admin_room.command_prefix
        self.messages = messages
        self.encryption = encryption
        self.encryption_missing = encryption_missing
        self.room = AdminRoom(
            config.admin_room,
            intent,
            state,
            encrypted=encryption is not None and config.admin_room.encrypt_created_room,
        )
        self.store = store
        self.decisions = decisions
        self._unreadable_answered: dict[UserID, float] = {}
        self.commands: dict[str, BoundCommand] = collect_commands(
            self,
            RequestCommands(config, store, decisions),
            GateCommands(gate, self.prefix, config.web.public_base_url),
            ReportCommands(store, gate),
            ModerationCommands(config, moderation, self.room.is_admin),
            AccountCommands(two_factor, config.homeserver.domain),
        )

    async def start(self) -> None:
        """Make sure the bot user exists with its name, and is in the admin room."""
        await self.intent.ensure_registered()
        await self.intent.set_displayname(self.config.appservice.bot_displayname)
        created = await self.room.prepare()
        await self._read_room_state()
        if created:
            assert self.room.room_id is not None
            await self.send(self.room.room_id, Reply(WELCOME.format(prefix=self.prefix)))

    async def join_newcomer_rooms(self) -> None:
        """Where only the bot brings newcomers in (MAS), it must be in their rooms. (On
        Synapse it invites only where the admin API cannot join them, and then joins the
        room as it invites: see invite_newcomer.)"""
        for room in self.config.registration.newcomer_rooms:
            await self._join_newcomer_room(room)

    async def _join_newcomer_room(self, room: str) -> None:
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

    async def _read_room_state(self) -> None:
        """Learn whether the admin room is encrypted, and its members (encryption needs
        both); say in the room and the log if it is encrypted and the bot cannot be."""
        room_id = self.room.room_id
        if room_id is None:
            return
        if self.encryption is not None:
            # Not joined yet, it fails: this runs again on joining.
            with contextlib.suppress(MForbidden, IntentError):
                await self.encryption.load_room(room_id)
            return
        await self.cannot_read_encrypted(
            self.encryption_missing or "admin_room.encryption is false in the config"
        )

    async def cannot_read_encrypted(self, cause: str) -> None:
        """If the admin room is encrypted, tell its admins (and the log) that the bot
        cannot read it, and why."""
        room_id = self.room.room_id
        if room_id is None:
            return
        try:
            await self.intent.get_state_event(room_id, EventType.ROOM_ENCRYPTION)
        except (MNotFound, MForbidden, IntentError):
            return  # not encrypted, or not joined yet (this runs again on joining)
        log.error("The admin room %s is encrypted: %s", room_id, DEAF.format(cause=cause))
        # In plaintext, which every client shows, whatever the bot's encryption can do.
        await self.intent.send_message(room_id, content_of(Reply(DEAF.format(cause=cause))))

    async def handle_event(self, event: Event) -> None:
        """Entry point for every event Synapse sends; one bad event never affects others."""
        try:
            if isinstance(event, EncryptedEvent):
                await self._on_encrypted(event)
            elif isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
                await self._on_membership(event)
            elif isinstance(event, MessageEvent) and event.type == EventType.ROOM_MESSAGE:
                await self._on_message(event)
            elif isinstance(event, ReactionEvent) and event.type == EventType.REACTION:
                await self._on_reaction(event)
        except Exception:
            log.exception("Failed to handle event %s", event.event_id)

    async def _on_encrypted(self, event: EncryptedEvent) -> None:
        if event.sender == self.intent.mxid or event.room_id != self.room.room_id:
            return
        if self.encryption is None:
            await self._unreadable(event, self.encryption_missing or "encryption is off")
            return
        try:
            decrypted = await self.encryption.decrypt(event)
        except SessionNotFound:
            # Its room key may come in a later transaction, which cannot arrive while this
            # one waits: wait beside it.
            background_task.create(self._decrypt_when_key_arrives(event))
            return
        except Exception as error:  # any failure: the admin must hear of it
            await self._unreadable(event, f"{type(error).__name__}: {error}")
            return
        await self.handle_event(decrypted)

    async def _decrypt_when_key_arrives(self, event: EncryptedEvent) -> None:
        assert self.encryption is not None
        try:
            if await self.encryption.wait_for_key(event):
                await self.handle_event(await self.encryption.decrypt(event))
                return
            await self._unreadable(event, "its room key never reached the bot's device")
        except Exception as error:
            log.exception("Failed to decrypt event %s", event.event_id)
            await self._unreadable(event, str(error))

    async def _unreadable(self, event: EncryptedEvent, cause: str) -> None:
        """A log line for each message the bot cannot decrypt; an answer asking to send
        it again, at most once per sender every UNREADABLE_ANSWER_SECONDS."""
        log.warning("Cannot decrypt %s from %s: %s", event.event_id, event.sender, cause)
        now = time.monotonic()
        last = self._unreadable_answered.get(event.sender)
        if last is not None and now - last < UNREADABLE_ANSWER_SECONDS:
            return
        self._unreadable_answered[event.sender] = now
        await self.send(event.room_id, Reply(UNREADABLE), in_reply_to=event.event_id)

    async def _on_membership(self, event: StateEvent) -> None:
        if self.encryption is not None and event.room_id == self.room.room_id:
            await self.encryption.handle_member_event(event)
        invited = (
            event.state_key == self.intent.mxid
            and isinstance(event.content, MemberStateEventContent)
            and event.content.membership == Membership.INVITE
        )
        if not invited:
            return
        if event.room_id == self.room.room_id:
            if await self.room.join():
                await self._read_room_state()
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
        """Invite a new account to a room the operator lists for newcomers, joining the
        room first if the bot is not in it; ProvisioningRefused says why it cannot."""
        try:
            room_id = room
            if room.startswith("#"):
                room_id = (await self.intent.resolve_room_alias(RoomAlias(room))).room_id
            # mautrix joins the room first if the bot is not in it yet.
            await self.intent.invite_user(RoomID(room_id), UserID(user_id))
        except IntentError:
            raise ProvisioningRefused(
                "M_FORBIDDEN", f"the bot {self.intent.mxid} is not in the room and cannot join", 403
            ) from None
        except MatrixRequestError as error:
            raise ProvisioningRefused(
                error.errcode,
                f"the bot's invite: {error.errcode}: {(error.message or '')[:200]}",
                error.http_status,
            ) from None

    async def send(self, room_id: RoomID, reply: Reply, in_reply_to: EventID | None = None) -> None:
        content = content_of(reply)
        if in_reply_to is not None:
            content.set_reply(in_reply_to)
        await self.messages.send(room_id, content)

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
COMMAND_CLASSES: tuple[type, ...] = (
    AdminBot,
    RequestCommands,
    GateCommands,
    ReportCommands,
    ModerationCommands,
    AccountCommands,
)
