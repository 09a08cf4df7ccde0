"""The pages anyone can open without an account, against the hello-world: the sign-up and
login forms, a request's status page and its confirmation link (which only shows what a
click would confirm: opening it must leave the token unused)."""

from __future__ import annotations

import aiohttp

from bench.context import READ_CLIENTS, Bench
from bench.load import Call, Load, run_load
from bench.report import Figure
from bench.seed import mail_tokens, seeded_requests
from bench.stack import Stack
from gatekeeper.appservice.domain.registration_request import State
from gatekeeper.appservice.storage.mail_tokens import CONFIRM_PURPOSE, STATUS_PURPOSE

HELLO_SHARE = 0.25
LINKS = READ_CLIENTS  # distinct requests (and tokens) behind the status and confirm pages
# What each page holds when it shows what it should (not the "invalid link" page).
SHOWN = {
    "/sign-up": 'action="/sign-up"',
    "/login": 'action="/login"',
    "/status": 'action="/status/withdraw"',
    "/confirm-email": 'action="/confirm-email"',
}


async def _links(stack: Stack, state: State, purpose: str) -> list[str]:
    prefix = {CONFIRM_PURPOSE: "cf", STATUS_PURPOSE: "st"}[purpose]
    requests = await seeded_requests(stack.db, prefix, LINKS, "not a hash", state)
    return await mail_tokens(stack.db, [request_id for request_id, _ in requests], purpose)


async def _check_shown(stack: Stack, path: str, query: str) -> None:
    """One page opened as the load will open it shows what it should: a link that the
    page took for invalid would be a cheap 404 and flatter the figure."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.web_url}{path}{query}") as response,
    ):
        if response.status != 200 or SHOWN[path] not in await response.text():
            raise RuntimeError(f"GET {path} did not show its page ({response.status})")


async def _unconfirmed(stack: Stack) -> int:
    return int(
        await stack.db.fetchval(
            "SELECT COUNT(*) FROM email_token t JOIN registration_request r"
            " ON r.id = t.request_id WHERE t.purpose=$1 AND t.used_at IS NULL"
            " AND r.status='unverified'",
            CONFIRM_PURPOSE,
        )
    )


async def pages(bench: Bench) -> list[Figure]:
    stack = bench.stack
    status = [f"?token={t}" for t in await _links(stack, State.PENDING, STATUS_PURPOSE)]
    confirm = [f"?token={t}" for t in await _links(stack, State.UNVERIFIED, CONFIRM_PURPOSE)]
    queries = {"/sign-up": [""], "/login": [""], "/status": status, "/confirm-email": confirm}
    hello = await bench.hello_world_per_second()
    figures = []
    for path, path_queries in queries.items():
        await _check_shown(stack, path, path_queries[0])
        calls = tuple(Call("GET", path + query) for query in path_queries)
        result = await run_load(
            Load(stack.web_url, calls, concurrency=READ_CLIENTS, seconds=bench.sizes.read_seconds)
        )
        figures.append(
            Figure(
                "pages",
                f"GET {path}: requests/s, {READ_CLIENTS} clients ({result.failures} failed)",
                result.per_second,
                "/s",
                "hello-world",
                hello,
                f"ratio ≥ {HELLO_SHARE}",
                result.failures == 0 and result.per_second >= HELLO_SHARE * hello,
            )
        )
    if await _unconfirmed(stack) != LINKS:
        raise RuntimeError("opening a confirmation link used its token or confirmed the request")
    return figures
