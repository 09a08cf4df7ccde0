"""The cheap read people repeat most: `GET /api/user-info` with a session, against an
aiohttp hello-world served the same way, and on SQLite against PostgreSQL."""

from __future__ import annotations

import aiohttp
from mautrix.util.async_db import Database, Scheme

from bench.context import PASSWORD, READ_CLIENTS, Bench, ReadFigures, log_in
from bench.load import Call, Load, run_load
from bench.report import Figure
from bench.seed import seeded_requests
from bench.stack import twin_gatekeeper
from gatekeeper.appservice.domain.passwords import PasswordHasher

SESSIONS = READ_CLIENTS
HELLO = "hello-world"
P99_TARGET_MS = 20.0
HELLO_SHARE = 0.5
SQLITE_SHARE = 0.5  # user-info on SQLite against PostgreSQL


def _figures(scenario: str, measured: ReadFigures, hello: ReadFigures, rate: float) -> list[Figure]:
    """Requests/s and latency beside the hello-world's."""
    closed_rps = measured.closed.per_second
    p99 = measured.open.percentile(99)
    return [
        Figure(
            scenario,
            f"requests/s, {READ_CLIENTS} clients ({measured.closed.failures} failed)",
            closed_rps,
            "/s",
            HELLO,
            hello.closed.per_second,
            f"ratio ≥ {HELLO_SHARE}",
            closed_rps >= HELLO_SHARE * hello.closed.per_second,
        ),
        Figure(
            scenario,
            f"p50 at {rate:.0f} req/s offered",
            measured.open.percentile(50),
            "ms",
            HELLO,
            hello.open.percentile(50),
            "",
            None,
        ),
        Figure(
            scenario,
            f"p99 at {rate:.0f} req/s offered ({measured.open.failures} failed)",
            p99,
            "ms",
            HELLO,
            hello.open.percentile(99),
            f"< {P99_TARGET_MS:.0f} ms",
            p99 < P99_TARGET_MS and measured.open.failures == 0,
        ),
    ]


async def user_info_calls(web_url: str, db: Database, prefix: str) -> tuple[Call, ...]:
    """`GET /api/user-info` with the session of each of SESSIONS seeded accounts."""
    accounts = await seeded_requests(
        db, prefix, SESSIONS, PasswordHasher.argon2_hasher().hash(PASSWORD)
    )
    tokens = [await log_in(web_url, email) for _, email in accounts]
    # An answer without a session is a 200 too: check that the cookie is taken.
    async with (
        aiohttp.ClientSession(cookies={"LOGIN_TOKEN": tokens[0]}) as session,
        session.get(web_url + "/api/user-info") as response,
    ):
        if "userName" not in await response.json():
            raise RuntimeError("GET /api/user-info did not see the session")
    return tuple(Call("GET", "/api/user-info", cookies={"LOGIN_TOKEN": t}) for t in tokens)


async def _on_both_databases(bench: Bench, measured: float) -> Figure:
    """Requests/s of user-info on SQLite against PostgreSQL, both in this run: the stack's
    figure (`measured`) and a second Gatekeeper's on the other database, loaded alike."""
    stack = bench.stack
    async with twin_gatekeeper(stack) as (web_url, db):
        calls = await user_info_calls(web_url, db, "tw")
        load = Load(web_url, calls, concurrency=READ_CLIENTS, seconds=bench.sizes.read_seconds)
        result = await run_load(load)
    if result.failures:
        raise RuntimeError(f"{result.failures} requests to the second Gatekeeper failed")
    twin = result.per_second
    sqlite, postgres = (measured, twin) if stack.db.scheme == Scheme.SQLITE else (twin, measured)
    return Figure(
        "userinfo",
        f"requests/s on SQLite, {READ_CLIENTS} clients (a Gatekeeper on each database)",
        sqlite,
        "/s",
        "PostgreSQL",
        postgres,
        f"ratio ≥ {SQLITE_SHARE}",
        sqlite >= SQLITE_SHARE * postgres,
    )


async def user_info(bench: Bench) -> list[Figure]:
    stack = bench.stack
    calls = await user_info_calls(stack.web_url, stack.db, "ui")
    measured = await bench.read_figures(stack.web_url, calls)
    hello = await bench.hello_world()
    figures = _figures("userinfo", measured, hello, bench.sizes.offered_rate)
    return [*figures, await _on_both_databases(bench, measured.closed.per_second)]
