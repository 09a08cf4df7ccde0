"""Ten times the requests: the admin room's commands and notices, `GET /api/user-info` and
the status page with the database holding the smaller and then the larger number of
requests (each with its status link), and the database's size per 10,000 requests."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.admin_room import command_ms, notice_burst
from bench.context import READ_CLIENTS, Bench
from bench.load import Call, Load, run_load
from bench.reads import user_info_calls
from bench.report import Figure
from bench.seed import mail_tokens, seeded_requests
from bench.stack import Stack
from gatekeeper.appservice.storage.mail_tokens import STATUS_PURPOSE

WITHIN = 1.5  # the larger database may make a figure this much worse, no more
STATUS_SAMPLE = 1000  # status links the load opens, drawn from every seeded request
PER = 10_000
MB = 1e6


@dataclass(frozen=True)
class Point:
    requests: int
    commands: dict[str, float]
    notices_posted: float
    user_info: float
    status: float
    database_bytes: int


async def _requests(stack: Stack) -> int:
    return int(await stack.db.fetchval("SELECT COUNT(*) FROM registration_request"))


async def _grow_to(stack: Stack, target: int, prefix: str) -> list[str]:
    """Seed requests (at least STATUS_SAMPLE) until the database holds `target`; their
    status links."""
    count = max(STATUS_SAMPLE, target - await _requests(stack))
    seeded = await seeded_requests(stack.db, prefix, count, "not a hash")
    return await mail_tokens(stack.db, [request_id for request_id, _ in seeded], STATUS_PURPOSE)


async def _per_second(bench: Bench, calls: tuple[Call, ...]) -> float:
    result = await run_load(
        Load(bench.stack.web_url, calls, concurrency=READ_CLIENTS, seconds=bench.sizes.read_seconds)
    )
    if result.failures:
        raise RuntimeError(f"{result.failures} of {calls[0].path}'s requests failed")
    return result.per_second


async def _measure(
    bench: Bench, user_info: tuple[Call, ...], status_tokens: list[str], burst_prefix: str
) -> Point:
    stack = bench.stack
    requests = await _requests(stack)
    database_bytes = await stack.database_bytes()
    sample = random.sample(status_tokens, STATUS_SAMPLE)
    status = tuple(Call("GET", f"/status?token={token}") for token in sample)
    commands = await command_ms(stack, bench.sizes.command_repeats, "sa-12")
    user_info_rate = await _per_second(bench, user_info)
    status_rate = await _per_second(bench, status)
    burst = await notice_burst(stack, burst_prefix, bench.sizes.burst)
    if burst.lost or burst.signed_up.failures:
        raise RuntimeError(f"the burst lost {burst.lost} notices")
    return Point(requests, commands, burst.all_posted, user_info_rate, status_rate, database_bytes)


def _compare(
    name: str, unit: str, small: tuple[int, float], large: tuple[int, float], more_is_better: bool
) -> Figure:
    """The figure at the larger database (requests, value) beside the smaller's."""
    (small_requests, limit), (large_requests, value) = small, large
    worse_by = limit / value if more_is_better else value / limit
    return Figure(
        "scale",
        f"{name} at {large_requests:,} requests",
        value,
        unit,
        f"at {small_requests:,}",
        limit,
        f"within {WITHIN}× ({worse_by:.2f}×)",
        worse_by <= WITHIN,
    )


async def scale(bench: Bench) -> list[Figure]:
    stack = bench.stack
    smaller, larger = bench.sizes.scale
    user_info = await user_info_calls(stack.web_url, stack.db, "sc")
    tokens = await _grow_to(stack, smaller, "sa")
    small = await _measure(bench, user_info, tokens, "sx")
    tokens += await _grow_to(stack, larger, "sb")
    large = await _measure(bench, user_info, tokens, "sy")
    figures = [
        _compare(
            f"{command} answered (seen by /sync)",
            "ms",
            (small.requests, small.commands[command]),
            (large.requests, large.commands[command]),
            more_is_better=False,
        )
        for command in ("!pending", "!search")
    ]
    for name, unit, what, more_is_better in (
        ("burst of sign-ups: all notices posted", "s", "notices_posted", False),
        ("GET /api/user-info: requests/s", "/s", "user_info", True),
        ("GET /status: requests/s", "/s", "status", True),
    ):
        pair = [(point.requests, float(getattr(point, what))) for point in (small, large)]
        figures.append(_compare(name, unit, pair[0], pair[1], more_is_better))
    added = (large.database_bytes - small.database_bytes) / (large.requests - small.requests)
    figures.append(
        Figure(
            "scale",
            f"database growth per {PER:,} requests, {small.requests:,} → {large.requests:,}",
            added * PER / MB,
            "MB",
            f"whole database per {PER:,} at {large.requests:,}",
            large.database_bytes / large.requests * PER / MB,
            "",
            None,
        )
    )
    return figures
