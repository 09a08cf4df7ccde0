"""!pending pages through any number of waiting requests, counting no further than it must."""

from __future__ import annotations

from gatekeeper.appservice.domain.registration_request import COLUMNS, State
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.database import transaction
from gatekeeper.appservice.timeutil import now_ms
from gatekeeper.bot.commands_requests import PAGE_SIZE, PENDING_COUNTED
from harness.matrix_user import MatrixUser
from tests.conftest import StartGatekeeper
from tests.flows import BOT, started_with_room


async def _waiting(gatekeeper: Gatekeeper, prefix: str, count: int) -> None:
    """`count` confirmed requests whose notices are posted (the bot leaves them alone),
    `{prefix}0000` the one waiting longest, so first on the first page."""
    status, matrix_status = COLUMNS[State.PENDING]
    now = now_ms()
    async with transaction(gatekeeper.db) as conn:
        await conn.executemany(
            "INSERT INTO registration_request (id, localpart, email, language, password_hash,"
            " status, matrix_status, email_verified, created_at, updated_at, next_attempt_at,"
            " notice_event_id, notice_state)"
            " VALUES ($1, $2, $3, 'en', 'hash', $4, $5, TRUE, $6, $6, $6, $7, 'pending')",
            [
                (
                    f"{prefix}{n:04d}",
                    f"{prefix}-{n}",
                    f"{prefix}-{n}@example.org",
                    status,
                    matrix_status,
                    now - (count - n) * 1000,
                    f"$posted-{prefix}-{n}",
                )
                for n in range(count)
            ],
        )


async def test_more_pending_than_counted_still_page(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    waiting = PENDING_COUNTED + 1
    await _waiting(gatekeeper, "pp", waiting)

    first = await alice.reply_to(room_id, "!pending", BOT)
    assert first.startswith(f"Pending requests, page 1 (more than {PENDING_COUNTED:,} in all):")
    assert "pp0000" in first
    assert f"pp{PAGE_SIZE - 1:04d}" in first
    assert f"pp{PAGE_SIZE:04d}" not in first
    assert first.endswith("Next: !pending 2")

    last_page = waiting // PAGE_SIZE + 1
    last = await alice.reply_to(room_id, f"!pending {last_page}", BOT)
    assert f"page {last_page} (more than" in last
    assert f"pp{waiting - 1:04d}" in last
    assert "Next:" not in last

    past = await alice.reply_to(room_id, f"!pending {last_page + 1}", BOT)
    assert past == f"There is no page {last_page + 1}: !pending shows the first."


async def test_a_counted_few_show_their_pages(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    await _waiting(gatekeeper, "pf", 12)
    first = await alice.reply_to(room_id, "!pending", BOT)
    assert first.startswith("Pending requests, page 1 of 2 (12 in all):")
    assert first.endswith("Next: !pending 2")
    # A page past the end shows the last one.
    second = await alice.reply_to(room_id, "!pending 9", BOT)
    assert second.startswith("Pending requests, page 2 of 2 (12 in all):")
    assert "pf0011" in second
    assert "Next:" not in second
