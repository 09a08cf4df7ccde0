"""Notices about requests in the admin room: posted when a request is pending, edited on change.

The database says what each notice last showed, so a crash between a change and its
notice only delays the notice.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import unicodedata

from mautrix.types import EventID, Format, MessageType, TextMessageEventContent

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.homeserver.encryption import RoomMessages
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.bot.admin_room import AdminRoom
from gatekeeper.bot.commands import Reply

log = logging.getLogger("gatekeeper.bot.notices")

APPROVE_KEYS = ("✅", "✔️", "✔", "👍")
REJECT_KEYS = ("❌", "✖️", "✖", "👎")
# Notices sent at once: Synapse persists concurrent events of a room in one batch, so a
# burst of sign-ups is posted several times faster than one send after another, at the
# price of notices sent together reaching the room in any order.
PARALLEL_SENDS = 16

# Applicant text in a notice is shown on one line, quoted and capped: it can never pass for
# a line of the bot's own (a fake "Approved by …"), nor fill the room. !show has it whole.
NOTICE_QUOTE_CHARS = 300
# Other text a notice repeats (decision reasons, homeserver errors) is capped too.
NOTICE_TEXT_CHARS = 500
# Bidirectional controls reorder what follows them on screen, so they break the line too.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# What the room shows for a request whose applicant names it after approval (the seed's
# /registrations/ API, appservice/domain/seed_registrations.py).
NO_NAME_YET = "no user name yet (chosen after approval)"

OUTCOME = {
    State.APPROVED: "✅ Approved by {decided_by}; creating the account…",
    State.PROVISIONING: "✅ Approved by {decided_by}; creating the account…",
    State.ACTIVE: "✅ Approved by {decided_by}; account {user_id} created.",
    State.FAILED: "⚠️ Approved by {decided_by}, but the account could not be created: {error}",
    State.REJECTED: "❌ Rejected by {decided_by}{reason}.",
    State.EXPIRED: "⌛ Expired: not decided in time.",
    State.WITHDRAWN: "↩️ Withdrawn by the applicant.",
    State.DEACTIVATED: "⛔ Approved by {decided_by}; account {user_id} created, since deactivated.",
}


def _breaks_lines(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Zl", "Zp") or character in BIDI_CONTROLS


def one_line(text: str, limit: int = NOTICE_TEXT_CHARS) -> str:
    """`text` on one line: each run of control characters, line or paragraph separators and
    spaces becomes one space; past `limit` characters it is cut with an ellipsis."""
    spaced = "".join(" " if _breaks_lines(character) else character for character in text)
    collapsed = " ".join(spaced.split())
    if len(collapsed) > limit:
        return collapsed[: limit - 1].rstrip() + "…"
    return collapsed


def quoted(text: str, limit: int = NOTICE_QUOTE_CHARS) -> str:
    """Applicant text between quotation marks it cannot close early itself."""
    plain = text.replace("“", '"').replace("”", '"')
    return f"“{one_line(plain, limit)}”"


def mask_email(email: str) -> str:
    name, _, domain = email.partition("@")
    return f"{name[:1]}***@{domain}"


def age(since_ms: int) -> str:
    minutes = max(0, int(time.time() - since_ms / 1000) // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // 1440} days ago"


def normalise_key(key: str) -> str:
    return key.replace("\ufe0f", "")


def shown_email(email: str, config: Config) -> str:
    return one_line(mask_email(email) if config.registration.mask_email else email)


def describe(
    request: RegistrationRequest,
    config: Config,
    prefix: str,
    reason_chars: int = NOTICE_QUOTE_CHARS,
) -> Reply:
    """The notice's text for the request's current state: one line per fact, and no
    applicant text able to add a line."""
    user_id = request.shown_user_id(config.homeserver.domain, NO_NAME_YET)
    email = shown_email(request.email, config)
    lines = [
        f"Sign-up request {request.id}: {user_id}",
        f"Email: {email} · language: {request.language} · asked {age(request.created_at)}",
    ]
    if request.reason:
        lines.append(f"Reason: {quoted(request.reason, reason_chars)}")
    state = request.state
    if state is State.PENDING:
        lines.append(
            f"React ✅ to approve or ❌ to reject, or send {prefix}approve {request.id}"
            f" / {prefix}reject {request.id} [reason]."
        )
    elif state in OUTCOME:
        reason = f": {one_line(request.decision_reason)}" if request.decision_reason else ""
        lines.append(
            OUTCOME[state].format(
                decided_by=request.decided_by or "an admin",
                user_id=user_id,
                error=one_line(request.last_error or "unknown error"),
                reason=reason,
            )
        )
    escaped = [html.escape(line) for line in lines]
    return Reply("\n".join(lines), f"<b>{escaped[0]}</b><br>" + "<br>".join(escaped[1:]))


def content_of(reply: Reply) -> TextMessageEventContent:
    """Every message the bot sends: a notice that mentions nobody, so an "@room" or a name
    in applicant text never notifies anyone (edits carry it in m.new_content too)."""
    content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=reply.text)
    content["m.mentions"] = {}
    if reply.html is not None:
        content.format = Format.HTML
        content.formatted_body = reply.html
    return content


class NoticeBoard:
    def __init__(
        self, config: Config, messages: RoomMessages, store: RegistrationStore, room: AdminRoom
    ) -> None:
        self.config = config
        self.messages = messages
        self.store = store
        self.room = room

    async def step(self) -> float | None:
        """Bring every notice up to date with its request."""
        if self.room.room_id is None:
            return None
        sending = asyncio.Semaphore(PARALLEL_SENDS)

        async def show_when_free(request: RegistrationRequest) -> None:
            async with sending:
                await self.show(request)

        while behind := await self.store.notices_behind():
            # Every send ends before the step does, so a failed one is not posted twice.
            results = await asyncio.gather(
                *(show_when_free(request) for request in behind), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return None

    async def show(self, request: RegistrationRequest) -> None:
        """Post or edit the request's notice. Each message has a transaction ID of its own,
        so if recording it fails after the send, sending it again gives back the same event
        (Synapse answers a repeated transaction ID with the first event) and the room does
        not see it twice."""
        assert self.room.room_id is not None
        room_id = self.room.room_id
        content = content_of(describe(request, self.config, self.room.config.command_prefix))
        if request.notice_event_id is None:
            event_id = await self.messages.send(room_id, content, txn_id=f"gk-notice-{request.id}")
        else:
            event_id = EventID(request.notice_event_id)
            content.set_edit(event_id)
            await self.messages.send(
                room_id, content, txn_id=f"gk-edit-{request.id}-{request.state.value}"
            )
            if request.state is State.FAILED:
                error = one_line(request.last_error or "unknown error")
                alert = content_of(
                    Reply(
                        f"Request {request.id}: the account could not be created ({error}). "
                        "Check the homeserver, then ask the applicant to sign up again."
                    )
                )
                alert.set_reply(event_id)
                await self.messages.send(room_id, alert, txn_id=f"gk-alert-{request.id}")
        await self.store.record_notice(request.id, event_id, request.state)
