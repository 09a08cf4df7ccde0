"""The gate's state (closed or not, the blocks) kept in memory: a change by this process
holds at once, one by another process within a second, and a block ends on time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.domain.gate import Gate
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.bot_state import BotState
from gatekeeper.appservice.timeutil import now_ms
from harness.matrix_user import MatrixUser
from tests.conftest import StartGatekeeper
from tests.example_config import example_config
from tests.flows import BOT, new_applicant, sign_up, started_with_room, web_url
from tests.test_cheap_refusals import count_statements

NO_CONFIRMATION = {"require_email_confirmation": False}
# What the sign-up page shows while sign-ups are open.
SIGN_UP_FORM = '<form method="post" action="/sign-up"'


async def no_room(_: str) -> None:
    pass


def gate_on(db: Database) -> Gate:
    return Gate(db, example_config().registration, BotState(db), no_room)


async def within_a_second(since: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail if a check begun a second after `since` or later
    does not (what a request sees is decided as it begins)."""
    while not await check():
        assert time.monotonic() - since < 1.0, "not seen within a second"
        await asyncio.sleep(0.05)


async def test_concurrent_questions_share_one_load(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = gate_on(db)
    statements: list[str] = []
    count_statements(db, statements, monkeypatch)
    answers = await asyncio.gather(*(gate.closed_reason() for _ in range(50)))
    assert answers == [None] * 50
    assert len(statements) == 2  # the closed flag and the blocks, read once
    for _ in range(50):
        assert await gate.refusal("ann", "ann@example.org", "203.0.113.9") is None
    # From memory (a refresh at most, should the machine stall for half a second).
    assert len(statements) <= 4


async def test_own_change_at_once_another_process_within_a_second(db: Database) -> None:
    here, there = gate_on(db), gate_on(db)
    assert await here.closed_reason() is None
    assert await there.closed_reason() is None
    await there.close("@admin:example.org", "a spam wave")
    assert await there.closed_reason() == "a spam wave"
    closed_at = time.monotonic()

    async def closed_here() -> bool:
        return await here.closed_reason() == "a spam wave"

    await within_a_second(closed_at, closed_here)

    block = await there.add_block("ip", "203.0.113.0/24", "@admin:example.org", None)
    assert await there.refusal(None, "ann@example.org", "203.0.113.9") is not None
    blocked_at = time.monotonic()

    async def blocked_here() -> bool:
        return await here.refusal(None, "ann@example.org", "203.0.113.9") is not None

    await within_a_second(blocked_at, blocked_here)

    assert await there.remove_block(block.id, "@admin:example.org")
    assert await there.refusal(None, "ann@example.org", "203.0.113.9") is None
    await there.open("@admin:example.org")
    assert await there.closed_reason() is None


async def test_a_block_ends_on_time_though_the_state_is_in_memory(db: Database) -> None:
    gate = gate_on(db)
    ends = now_ms() + 300
    await gate.add_block("email", "ann@example.org", "@admin:example.org", ends)
    # Loaded now, kept for half a second: past the block's end.
    assert await gate.refusal("ann", "ann@example.org", "203.0.113.9") is not None
    await asyncio.sleep((ends - now_ms()) / 1000 + 0.02)
    assert await gate.refusal("ann", "ann@example.org", "203.0.113.9") is None


async def sign_up_page(gatekeeper: Gatekeeper) -> str:
    url = web_url(gatekeeper) + "/sign-up"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_admin_commands_reach_every_process_within_a_second(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    # PostgreSQL: a second process, standing by, serves the web too. SQLite has one.
    postgres = not gatekeeper.config.database.url.startswith("sqlite:")
    other = await start_gatekeeper(registration=NO_CONFIRMATION) if postgres else gatekeeper
    assert other.role == ("standby" if postgres else "active")
    assert SIGN_UP_FORM in await sign_up_page(other)  # its state is in memory, open

    answer = await alice.reply_to(room_id, "!close maintenance tonight", BOT)
    answered = time.monotonic()
    assert answer.startswith("Sign-ups are closed")

    async def closed() -> bool:
        page = await sign_up_page(other)
        return "Sign-ups are paused. maintenance tonight" in page and SIGN_UP_FORM not in page

    await within_a_second(answered, closed)
    asked = time.monotonic()
    status, body = await sign_up(other, new_applicant())
    assert (status, body["errcode"]) == (403, "GK_SIGNUPS_CLOSED")
    assert asked - answered < 1.0

    assert await alice.reply_to(room_id, "!open", BOT) == "Sign-ups are open."
    answered = time.monotonic()

    async def open_again() -> bool:
        return SIGN_UP_FORM in await sign_up_page(other)

    await within_a_second(answered, open_again)
    asked = time.monotonic()
    assert (await sign_up(other, new_applicant()))[0] == 201
    assert asked - answered < 1.0

    answer = await alice.reply_to(room_id, "!block ip 127.0.0.1", BOT)
    answered = time.monotonic()
    block_id = answer.split()[1].rstrip(":")

    async def refused() -> bool:
        status, body = await sign_up(other, new_applicant())
        assert status in (201, 403), body
        return status == 403 and body["errcode"] == "GK_SIGNUP_REFUSED"

    await within_a_second(answered, refused)

    assert await alice.reply_to(room_id, f"!unblock {block_id}", BOT) == (
        f"Block {block_id} is lifted."
    )
    answered = time.monotonic()

    async def accepted() -> bool:
        return (await sign_up(other, new_applicant()))[0] == 201

    await within_a_second(answered, accepted)
