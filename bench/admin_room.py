"""The admin room at scale: commands over many pending requests, and a burst of sign-ups
whose notices must all reach the room."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from mautrix.types import PaginationDirection

from bench.context import Bench
from bench.hashing import sign_up_calls
from bench.load import Load, LoadResult, run_load
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


async def all_notices_posted_at(stack: Stack, since_ms: int, expected: int) -> float:
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


@dataclass(frozen=True)
class Burst:
    """A burst of sign-ups and the notices Gatekeeper posted for them."""

    size: int
    signed_up: LoadResult
    all_posted_at: float  # wall clock
    seen: int  # distinct notices in the room's history

    @property
    def all_posted(self) -> float:
        """Seconds from the burst's start until every notice was posted."""
        return self.all_posted_at - self.signed_up.started_at

    @property
    def lag(self) -> float:
        """Seconds from the last sign-up until every notice was posted."""
        return self.all_posted_at - self.signed_up.finished_at

    @property
    def lost(self) -> int:
        return self.size - self.seen


async def notice_burst(stack: Stack, prefix: str, size: int) -> Burst:
    """`size` sign-ups from 16 clients, and the notices they bring into the room."""
    since_ms = now_ms()
    burst = asyncio.create_task(
        run_load(Load(stack.web_url, sign_up_calls(prefix, size), concurrency=BURST_CLIENTS))
    )
    all_posted_at = await all_notices_posted_at(stack, since_ms, size)
    signed_up = await burst
    return Burst(size, signed_up, all_posted_at, len(await _notices_in_room(stack, prefix)))


async def command_ms(stack: Stack, repeats: int, search: str) -> dict[str, float]:
    """Median answer times of `!help` (no database), `!pending` and `!search <search>`."""
    return {
        command.split()[0]: await _answer_ms(stack, command, repeats)
        for command in ("!help", "!pending", f"!search {search}")
    }


async def admin_room(bench: Bench) -> list[Figure]:
    stack, sizes = bench.stack, bench.sizes
    await seeded_requests(stack.db, "pd", sizes.pending, "not a hash")
    times = await command_ms(stack, sizes.command_repeats, "pd-12")
    command_figures = [
        Figure(
            "admin-room",
            f"{command} over {sizes.pending:,} pending, answer by /sync",
            times[command],
            "ms",
            "!help (no database)",
            times["!help"],
            target,
            times[command] < COMMAND_TARGET_MS if target else None,
        )
        for command, target in (
            ("!pending", f"< {COMMAND_TARGET_MS:.0f} ms"),
            ("!search", ""),
        )
    ]
    burst = await notice_burst(stack, "bu", sizes.burst)
    burst_figure = Figure(
        "admin-room",
        f"burst of {sizes.burst:,} sign-ups: all notices posted ({burst.lost} lost)",
        burst.all_posted,
        "s",
        "the sign-ups themselves",
        burst.signed_up.elapsed,
        f"lag {burst.lag:.1f} s ≤ {NOTICE_LAG_TARGET_S:.0f} s",
        burst.lost == 0 and burst.signed_up.failures == 0 and burst.lag <= NOTICE_LAG_TARGET_S,
    )
    return [*command_figures, burst_figure]
