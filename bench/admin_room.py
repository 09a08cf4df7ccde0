"""The admin room at scale: commands over many pending requests, and a burst of sign-ups
whose notices must all reach the room."""

from __future__ import annotations

import asyncio
import statistics
import time

from mautrix.types import PaginationDirection

from bench.context import Bench
from bench.hashing import sign_up_calls
from bench.load import Load, run_load
from bench.report import Figure
from bench.seed import seeded_requests
from bench.stack import Stack
from gatekeeper.appservice.timeutil import now_ms

COMMAND_TARGET_MS = 200.0
NOTICE_LAG_TARGET_S = 2.0
BURST_CLIENTS = 16


async def _answer_ms(stack: Stack, command: str, repeats: int) -> float:
    """Median time from sending a command until the bot's reply arrives by /sync."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await stack.admin.reply_to(stack.room_id, command, stack.bot, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _all_notices_posted_at(stack: Stack, since_ms: int, expected: int) -> float:
    """Wall-clock time at which Gatekeeper has recorded a posted notice for all `expected`
    requests made since `since_ms` (polled every 50 ms with a query on the (status,
    created_at) index, so the polling itself costs PostgreSQL next to nothing)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        row = await stack.db.fetchrow(
            "SELECT COUNT(*) AS made, COUNT(notice_event_id) AS posted FROM registration_request"
            " WHERE status='pending' AND created_at >= $1",
            since_ms,
        )
        assert row is not None  # an aggregate always has its row
        if row["made"] >= expected and row["posted"] >= row["made"]:
            return time.time()
        await asyncio.sleep(0.05)
    raise TimeoutError("the notices of the burst were not all posted in 600 s")


async def _notices_in_room(stack: Stack, prefix: str) -> set[str]:
    """The distinct notices for `prefix` sign-ups in the room's history, as admins see it."""
    seen: set[str] = set()
    token = None
    while True:
        page = await stack.admin.api.get_messages(
            stack.room_id, PaginationDirection.BACKWARD, from_token=token, limit=1000
        )
        # mautrix declares PaginatedMessages in a NamedTuple form that mypy reads as empty.
        events, end = page.events, page.end  # type: ignore[attr-defined]
        for event in events:
            body = str(event.content.get("body", "")) if event.sender == stack.bot else ""
            first_line = body.split("\n", 1)[0]
            if first_line.startswith("Sign-up request") and f"@{prefix}-" in first_line:
                seen.add(first_line)
        if not events or end is None:
            return seen
        token = end


async def admin_room(bench: Bench) -> list[Figure]:
    stack, sizes = bench.stack, bench.sizes
    await seeded_requests(stack.db, "pd", sizes.pending, "not a hash")
    help_ms = await _answer_ms(stack, "!help", sizes.command_repeats)
    pending_ms = await _answer_ms(stack, "!pending", sizes.command_repeats)
    search_ms = await _answer_ms(stack, "!search pd-12", sizes.command_repeats)
    command_figures = [
        Figure(
            "admin-room",
            f"!{name} over {sizes.pending:,} pending, answer by /sync",
            value,
            "ms",
            "!help (no database)",
            help_ms,
            target,
            value < COMMAND_TARGET_MS if target else None,
        )
        for name, value, target in (
            ("pending", pending_ms, f"< {COMMAND_TARGET_MS:.0f} ms"),
            ("search", search_ms, ""),
        )
    ]

    prefix = "bu"
    since_ms = now_ms()
    burst = asyncio.create_task(
        run_load(Load(stack.web_url, sign_up_calls(prefix, sizes.burst), concurrency=BURST_CLIENTS))
    )
    all_posted_at = await _all_notices_posted_at(stack, since_ms, sizes.burst)
    signed_up = await burst
    seen = await _notices_in_room(stack, prefix)
    all_posted = all_posted_at - signed_up.started_at
    lag = all_posted_at - signed_up.finished_at
    lost = sizes.burst - len(seen)
    burst_figure = Figure(
        "admin-room",
        f"burst of {sizes.burst:,} sign-ups: all notices posted ({lost} lost)",
        all_posted,
        "s",
        "the sign-ups themselves",
        signed_up.elapsed,
        f"lag {lag:.1f} s ≤ {NOTICE_LAG_TARGET_S:.0f} s",
        lost == 0 and signed_up.failures == 0 and lag <= NOTICE_LAG_TARGET_S,
    )
    return [*command_figures, burst_figure]
