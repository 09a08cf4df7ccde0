"""The admin-room commands that report: statistics and the audit log."""

from __future__ import annotations

from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.storage.registration_store import RegistrationStore
from gatekeeper.appservice.timeutil import now_ms
from gatekeeper.bot.commands import CommandContext, Reply, command
from gatekeeper.bot.options import when


class ReportCommands:
    def __init__(self, store: RegistrationStore, gate: Gate) -> None:
        self.store = store
        self.gate = gate

    @command("stats", help="requests and decisions this week and month")
    async def stats(self, ctx: CommandContext) -> Reply:
        lines = []
        for label, days in (("This week", 7), ("This month", 30)):
            figures = await self.store.statistics(now_ms() - days * 86_400_000)
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
