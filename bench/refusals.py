"""Refusals must be cheap: a sign-up refused by the honeypot, a block, the closed gate or
its address's rate limit, a login refused by the account's lockout or its address's rate
limit, each against the hello-world, and none of them may cost an argon2 hash or a call to
the homeserver (counted inside Gatekeeper, see instrumented.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.context import PASSWORD, READ_CLIENTS, Bench
from bench.hashing import sign_up_call
from bench.instrumented import Counts
from bench.load import CSRF_HEADER, FORWARDED_FOR, Call, Load, new_client_address, run_load
from bench.report import Figure
from bench.seed import seeded_requests
from bench.stack import Stack
from gatekeeper.appservice.domain.antibot import HONEYPOT_FIELD
from gatekeeper.appservice.domain.passwords import PasswordHasher

HELLO_SHARE = 0.25
SIGN_UP = "/api/auth/sign-up"
LOGIN = "/api/auth/login"
BLOCKED_DOMAIN = "blocked.example"
CLOSED_REASON = "closed-for-the-benchmark"
# Calls cycled by the load, each from an address of its own where the refusal is not the
# address's: a few hits per address, far below its limits, at up to 20,000 requests/s.
DISTINCT_CALLS = 20_000
WRONG_PASSWORD = "not the benchmark passphrase"  # noqa: S105
QUIET_SECONDS = 0.5
NOTE_SECONDS = 60


@dataclass(frozen=True)
class Refusal:
    what: str
    calls: tuple[Call, ...]
    status: int  # the answer every call gets
    ready: Callable[[Stack], Awaitable[None]] | None = None  # sets the refusal up
    done: Callable[[Stack], Awaitable[None]] | None = None  # undoes it


async def _post(
    stack: Stack, path: str, body: dict[str, Any], client: str
) -> tuple[int, dict[str, Any]]:
    """One request as the load sends it: the answer's status and JSON body."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(stack.web_url + "/api/csrf") as response:
            csrf = str((await response.json())["csrfToken"])
        headers = {CSRF_HEADER: csrf, FORWARDED_FOR: client}
        async with session.post(stack.web_url + path, json=body, headers=headers) as response:
            return response.status, await response.json()


async def _command(stack: Stack, command: str) -> str:
    reply = await stack.admin.reply_to(stack.room_id, command, stack.bot, timeout=60)
    print(f"  {command} → {reply}", flush=True)
    return reply


async def _until_gate(stack: Stack, closed: bool) -> None:
    """Wait until the sign-up page says the gate is `closed` (or not): a change of the
    gate reaches every process within a second."""
    deadline = time.monotonic() + 10
    while True:
        async with (
            aiohttp.ClientSession() as session,
            session.get(stack.web_url + "/sign-up") as response,
        ):
            if (CLOSED_REASON in await response.text()) == closed:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sign-up page does not say closed={closed}")
        await asyncio.sleep(0.1)


async def _exhaust_sign_ups(stack: Stack, client: str) -> None:
    """Use up the address's sign-ups with sign-ups whose invite is unknown: they count,
    and are refused before any hash or homeserver call."""
    call = sign_up_call("rx", 0, client, invite="no-such-invite")
    assert call.body is not None
    for _ in range(10_000):
        status, _ = await _post(stack, SIGN_UP, call.body, client)
        if status == 429:
            return
    raise RuntimeError("no sign-up limit per address")


async def _exhaust_logins(stack: Stack, client: str) -> None:
    """Use up the address's login attempts (each before the limit costs a hash), each for
    an unknown address of its own: the tries at a name its lock refuses do not count."""
    for attempt in range(10_000):
        body = {"email": f"nobody-{attempt}@example.org", "password": WRONG_PASSWORD}
        status, _ = await _post(stack, LOGIN, body, client)
        if status == 429:
            return
    raise RuntimeError("no login limit per address")


async def _lock(stack: Stack, email: str) -> None:
    """Fail the account's password as often as the lockout allows: even the right one is
    refused then."""
    wrong = {"email": email, "password": WRONG_PASSWORD}
    for _ in range(stack.config().security.lockout_failures):
        await _post(stack, LOGIN, wrong, new_client_address())
    right = {"email": email, "password": PASSWORD}
    _, answer = await _post(stack, LOGIN, right, new_client_address())
    if answer.get("status") == "logged-in":
        raise RuntimeError(f"{email} did not lock")


def _refusals(email_to_lock: str) -> list[Refusal]:
    distinct = range(DISTINCT_CALLS)
    honeypot = {HONEYPOT_FIELD: "https://spam.example"}
    block_id: list[str] = []

    async def block(stack: Stack) -> None:
        reply = await _command(stack, f"!block email-domain {BLOCKED_DOMAIN}")
        block_id.append(reply.split(":", 1)[0].removeprefix("Block "))

    async def unblock(stack: Stack) -> None:
        await _command(stack, f"!unblock {block_id[0]}")

    async def close(stack: Stack) -> None:
        await _command(stack, f"!close {CLOSED_REASON}")
        await _until_gate(stack, closed=True)

    async def reopen(stack: Stack) -> None:
        await _command(stack, "!open")
        await _until_gate(stack, closed=False)

    sign_up_limited, login_limited = new_client_address(), new_client_address()

    async def exhaust_sign_ups(stack: Stack) -> None:
        await _exhaust_sign_ups(stack, sign_up_limited)

    async def exhaust_logins(stack: Stack) -> None:
        await _exhaust_logins(stack, login_limited)

    async def lock(stack: Stack) -> None:
        await _lock(stack, email_to_lock)

    right_login = {"email": email_to_lock, "password": PASSWORD}
    return [
        Refusal(
            "sign-up refused by the honeypot",
            tuple(sign_up_call("hp", i, **honeypot) for i in distinct),
            403,
        ),
        Refusal(
            "sign-up refused by a block (email domain)",
            tuple(sign_up_call("bl", i, email=f"bl-{i}@{BLOCKED_DOMAIN}") for i in distinct),
            403,
            block,
            unblock,
        ),
        Refusal(
            "sign-up refused by the closed gate",
            tuple(sign_up_call("cl", i) for i in distinct),
            403,
            close,
            reopen,
        ),
        Refusal(
            "sign-up refused by its address's rate limit",
            tuple(sign_up_call("rl", i, sign_up_limited) for i in distinct),
            429,
            exhaust_sign_ups,
        ),
        Refusal(
            "login refused by the account's lockout",
            tuple(Call("POST", LOGIN, right_login, client=new_client_address()) for _ in distinct),
            200,  # the answer of a wrong password: a lockout tells nothing
            lock,
        ),
        Refusal(
            "login refused by its address's rate limit",
            tuple(Call("POST", LOGIN, right_login, client=login_limited) for _ in distinct),
            429,
            exhaust_logins,
        ),
    ]


def _notes_allowed(seconds: float) -> int:
    """The admin room hears of refused sign-ups, at most one note per rule and minute."""
    return math.ceil(seconds / NOTE_SECONDS)


async def _quiet(stack: Stack) -> Counts:
    """The counts once Gatekeeper has stopped calling the homeserver (the set-up's replies
    in the room are sent), so that a window counts only its own requests' calls."""
    counts = stack.counts()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_SECONDS)
        now = stack.counts()
        if now == counts:
            break
        counts = now
    return counts


async def refusals(bench: Bench) -> list[Figure]:
    stack = bench.stack
    hello = await bench.hello_world_per_second()
    hashed = PasswordHasher.argon2_hasher().hash(PASSWORD)
    [(_, email_to_lock)] = await seeded_requests(stack.db, "lock", 1, hashed)
    figures = []
    total, refused = Counts(), 0
    for refusal in _refusals(email_to_lock):
        if refusal.ready is not None:
            await refusal.ready(stack)
        before = await _quiet(stack)
        result = await run_load(
            Load(
                stack.web_url,
                refusal.calls,
                concurrency=READ_CLIENTS,
                seconds=bench.sizes.read_seconds,
            )
        )
        spent = await _quiet(stack) - before
        if refusal.done is not None:
            await refusal.done(stack)
        total, refused = total + spent, refused + result.requests
        other = result.requests - result.statuses.get(refusal.status, 0)
        notes = _notes_allowed(result.elapsed)
        figures.append(
            Figure(
                "refusals",
                f"{refusal.what}: requests/s, {READ_CLIENTS} clients ({other} not"
                f" {refusal.status}; {spent.hashes} hashes, {spent.synapse_calls} Synapse calls,"
                f" {spent.room_messages} room notes)",
                result.per_second,
                "/s",
                "hello-world",
                hello,
                f"ratio ≥ {HELLO_SHARE}, no hash, no call, ≤ {notes} note",
                other == 0
                and spent.hashes == spent.synapse_calls == 0
                and spent.room_messages <= notes
                and result.per_second >= HELLO_SHARE * hello,
            )
        )
    figures += [
        Figure(
            "refusals",
            f"{what} during all refusals",
            count,
            "",
            "refused requests",
            refused,
            "= 0",
            count == 0,
        )
        for what, count in (
            ("argon2 hashes", total.hashes),
            ("Synapse calls", total.synapse_calls),
        )
    ]
    return figures
