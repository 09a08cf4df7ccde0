"""The admin-room commands on sign-up requests: decide, list, show and find them."""

from __future__ import annotations

from datetime import UTC, datetime

from gatekeeper.appservice.config import Config
from gatekeeper.appservice.domain.decisions import Decisions
from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Outcome, Result
from gatekeeper.appservice.domain.signup import MAX_REASON_CHARS
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.bot.commands import CommandContext, Reply, command
from gatekeeper.bot.notices import NO_NAME_YET, age, describe, one_line, shown_email

PAGE_SIZE = 10
# !pending counts this many at most: beyond, "more than" is all an admin needs, and a
# count of every request waiting reads them all.
PENDING_COUNTED = 1000
DECISION_ANSWERS = {
    Outcome.CHANGED: "{verb} {id} ({user_id}).",
    Outcome.ALREADY: "{id} is already {state}.",
    Outcome.REFUSED: "{id} cannot be {verb_lower}: it is {state}.",
}


class RequestCommands:
    def __init__(self, config: Config, store: RegistrationStore, decisions: Decisions) -> None:
        self.config = config
        self.prefix = config.admin_room.command_prefix
        self.store = store
        self.decisions = decisions

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
                user_id=request.shown_user_id(self.config.homeserver.domain, NO_NAME_YET),
            )
        )

    @command("approve", args="<id>", help="approve a request: its account is created")
    async def approve(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        result = await self.decisions.approve(ctx.args[0], ctx.sender)
        return self._decision_answer(result, ctx.args[0], "Approved")

    @command("reject", args="<id> [reason]", help="reject a request; the reason is mailed")
    async def reject(self, ctx: CommandContext) -> Reply:
        if not ctx.args:
            return Reply(ctx.usage)
        reason = ctx.raw_args[len(ctx.args[0]) :].strip()
        result = await self.decisions.reject(ctx.args[0], ctx.sender, reason)
        return self._decision_answer(result, ctx.args[0], "Rejected")

    @command("pending", args="[page]", help="list the requests waiting for a decision")
    async def pending(self, ctx: CommandContext) -> Reply:
        page = max(int(ctx.args[0]) if ctx.args and ctx.args[0].isdigit() else 1, 1)
        counted = await self.store.count_in_state(State.PENDING, PENDING_COUNTED + 1)
        if counted == 0:
            return Reply("No requests are waiting for a decision.")
        if counted <= PENDING_COUNTED:
            pages = (counted + PAGE_SIZE - 1) // PAGE_SIZE
            page = min(page, pages)
            where = f"page {page} of {pages} ({counted} in all)"
        else:
            where = f"page {page} (more than {PENDING_COUNTED:,} in all)"
        requests = await self.store.in_state(State.PENDING, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        if not requests:  # past the end of more than PENDING_COUNTED
            return Reply(f"There is no page {page}: {self.prefix}pending shows the first.")
        lines = [f"Pending requests, {where}:"]
        lines += [self._summary(r) for r in requests]
        counted_all = counted <= PENDING_COUNTED
        if counted > page * PAGE_SIZE if counted_all else len(requests) == PAGE_SIZE:
            lines.append(f"Next: {self.prefix}pending {page + 1}")
        return Reply("\n".join(lines))

    @command("show", args="<id>", help="show a request and its history")
    async def show(self, ctx: CommandContext) -> Reply:
        if len(ctx.args) != 1:
            return Reply(ctx.usage)
        request = await self.store.get(ctx.args[0])
        if request is None:
            return Reply(f"There is no request {ctx.args[0]}. {self.prefix}search finds one.")
        # The whole reason (sign-ups keep at most MAX_REASON_CHARS), still on one line.
        notice = describe(request, self.config, self.prefix, reason_chars=MAX_REASON_CHARS)
        lines = [notice.text, f"State: {request.state}"]
        lines.append("History:")
        for entry in await self.store.history(request.id):
            when = datetime.fromtimestamp(entry.at / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
            change = f"{entry.from_state or 'new'} → {entry.to_state}"
            why = f" ({one_line(entry.reason)})" if entry.reason else ""
            lines.append(f"• {when} {change} by {entry.actor}{why}")
        return Reply("\n".join(lines))

    @command("search", args="<text>", help="find requests by name, email or ID")
    async def search(self, ctx: CommandContext) -> Reply:
        if not ctx.raw_args:
            return Reply(ctx.usage)
        found = await self.store.search(ctx.raw_args)
        if not found:
            return Reply(f"No request matches “{ctx.raw_args}”.")
        return Reply(
            "\n".join([f"Requests matching “{ctx.raw_args}”:"] + [self._summary(r) for r in found])
        )

    def _summary(self, request: RegistrationRequest) -> str:
        email = shown_email(request.email, self.config)
        who = request.shown_user_id(self.config.homeserver.domain, NO_NAME_YET)
        return f"• {request.id} {who} — {email} — {request.state} — {age(request.created_at)}"
