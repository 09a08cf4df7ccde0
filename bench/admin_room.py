"""The admin room at scale: commands over many pending requests, and a burst of sign-ups
whose notices must all reach the room."""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.context import Bench
from bench.hashing import sign_up_calls
from bench.load import Load, run_load
from bench.report import Figure
from bench.seed import pending_requests
from bench.stack import Stack

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


async def _notices_seen(stack: Stack, prefix: str, expected: int, timeout: float) -> set[str]:
    """Sync the admin room until `expected` notices for `prefix` sign-ups arrived."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        await stack.admin.sync_once()
        for event in stack.admin.timeline:
            body = event.get("content", {}).get("body", "")
            if event["sender"] == stack.bot and body.startswith("Sign-up request"):
                first_line = body.split("\n", 1)[0]
                if f"@{prefix}-" in first_line:
                    seen.add(first_line)
        stack.admin.timeline.clear()
    return seen


async def admin_room(bench: Bench) -> list[Figure]:
    stack, sizes = bench.stack, bench.sizes
    await pending_requests(stack.db, "pd", sizes.pending, "not a hash")
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
    burst = asyncio.create_task(
        run_load(Load(stack.web_url, sign_up_calls(prefix, sizes.burst), concurrency=BURST_CLIENTS))
    )
    seen = await _notices_seen(stack, prefix, sizes.burst, timeout=600)
    all_posted_at = time.time()
    signed_up = await burst
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
