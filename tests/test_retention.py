"""Personal data kept no longer than needed: the retention sweep (docs/privacy.md)."""

from __future__ import annotations

from mautrix.util.async_db import Database, Scheme

from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.timeutil import now_ms
from harness.matrix_user import MatrixUser
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    active_account,
    all_mail_sent,
    api,
    link_token,
    new_applicant,
    request_id_of,
    sign_up,
    started_with_room,
    wait_for_state,
)

DAY_MS = 86_400_000
CLIENT_ADDRESS = "127.0.0.1"  # every test client's


async def database_text(db: Database) -> str:
    """Every value of every text column of every table, one per line: a full dump."""
    if db.scheme == Scheme.SQLITE:
        tables = [
            row["name"]
            for row in await db.fetch("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        columns = {
            table: [
                row["name"]
                for row in await db.fetch(f"PRAGMA table_info({table})")
                if row["type"].upper() == "TEXT"
            ]
            for table in tables
        }
    else:
        columns = {}
        for row in await db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
            " AND data_type IN ('text', 'character varying')"
        ):
            columns.setdefault(row["table_name"], []).append(row["column_name"])
    values = []
    for table, names in columns.items():
        for name in names:
            rows = await db.fetch(f'SELECT "{name}" AS v FROM "{table}"')
            values += [str(row["v"]) for row in rows if row["v"] is not None]
    assert values, "the dump found no text at all"
    return "\n".join(values)


async def confirmed(
    gatekeeper: Gatekeeper, smtp: MailCatcher, prefix: str
) -> tuple[Applicant, str, str]:
    """An applicant who signed up with a reason and confirmed: them, their request's ID
    and their reason."""
    applicant = new_applicant(prefix)
    reason = f"the reason of {applicant.localpart}"
    assert (await sign_up(gatekeeper, applicant, reason=reason))[0] == 201
    mail = await smtp.wait_for(applicant.email, "confirm")
    token = link_token(mail, "confirm-email")
    await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": token})
    request_id = await request_id_of(gatekeeper, applicant)
    await wait_for_state(gatekeeper, request_id, "pending")
    return applicant, request_id, reason


async def test_the_sweep_erases_closed_requests_everywhere_and_keeps_the_tombstone(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher
) -> None:
    gatekeeper, room_id = await started_with_room(start_gatekeeper, alice)
    rejected, rejected_id, rejected_reason = await confirmed(gatekeeper, smtp, "rex")
    withdrawn, withdrawn_id, withdrawn_reason = await confirmed(gatekeeper, smtp, "wyn")
    live, _, live_reason = await confirmed(gatekeeper, smtp, "liv")
    unconfirmed = new_applicant("una")
    unconfirmed_reason = f"the reason of {unconfirmed.localpart}"
    await sign_up(gatekeeper, unconfirmed, reason=unconfirmed_reason)
    unconfirmed_id = await request_id_of(gatekeeper, unconfirmed)
    await smtp.wait_for(unconfirmed.email, "confirm")

    answer = await alice.reply_to(room_id, f"!reject {rejected_id} {rejected.email} is spam", BOT)
    assert "rejected" in answer.lower()
    status_mail = smtp.to(withdrawn.email)[0]
    await api(
        gatekeeper,
        "POST",
        "/api/registration/withdraw",
        {"token": link_token(status_mail, "status")},
    )
    # Never confirmed: the expiry sweep closes it after request_ttl_hours.
    await gatekeeper.db.execute(
        "UPDATE registration_request SET created_at = created_at - $1 WHERE id = $2",
        3 * DAY_MS,
        unconfirmed_id,
    )
    await gatekeeper.registrations.expire_older_than(now_ms() - 2 * DAY_MS)
    await wait_for_state(gatekeeper, unconfirmed_id, "expired")
    blocked = new_applicant("blo")
    await alice.reply_to(room_id, f"!block email {blocked.email}", BOT)
    ended_block = await alice.reply_to(room_id, "!block ip 198.51.100.0/24", BOT)
    lifted = await alice.reply_to(room_id, f"!unblock {ended_block.split()[1].rstrip(':')}", BOT)
    assert lifted.endswith("is lifted.")
    await all_mail_sent(gatekeeper)

    closed = {
        rejected_id: (rejected, rejected_reason),
        withdrawn_id: (withdrawn, withdrawn_reason),
        unconfirmed_id: (unconfirmed, unconfirmed_reason),
    }
    before = await database_text(gatekeeper.db)
    # Withdrawing erased at once (tests/test_privacy_pages.py); the others wait their time.
    for request_id, (applicant, reason) in closed.items():
        assert (applicant.email in before) is (request_id != withdrawn_id)
        assert (reason in before) is (request_id != withdrawn_id)
    assert f"addr:{CLIENT_ADDRESS}" in before
    assert "198.51.100.0/24" in before

    # Not yet their time: nothing goes.
    await gatekeeper.sweep_retention()
    assert await database_text(gatekeeper.db) == before

    # 31 days later (the clock of what the sweep looks at: closing, sending, counting).
    await gatekeeper.db.execute(
        "UPDATE registration_request SET updated_at = updated_at - $1", 31 * DAY_MS
    )
    await gatekeeper.db.execute("UPDATE mail_outbox SET sent_at = sent_at - $1", 31 * DAY_MS)
    await gatekeeper.db.execute(
        "UPDATE rate_limit SET window_start = window_start - $1", 8 * DAY_MS
    )
    await gatekeeper.db.execute("UPDATE signup_block SET removed_at = removed_at - $1", 31 * DAY_MS)
    await gatekeeper.sweep_retention()
    after = await database_text(gatekeeper.db)
    for applicant, reason in closed.values():
        assert applicant.email.lower() not in after.lower()
        assert applicant.localpart not in after
        assert reason not in after
    assert "is spam" not in after  # the admin's reason named the applicant
    assert CLIENT_ADDRESS not in after
    assert "198.51.100" not in after  # the removed block's network
    # The live request keeps everything; so does the block.
    for kept in (live.email, live_reason, live.localpart):
        assert kept in after
    assert blocked.email in after

    # Idempotent: a second sweep finds nothing more.
    await gatekeeper.sweep_retention()
    assert await database_text(gatekeeper.db) == after
    assert (await sign_up(gatekeeper, blocked))[1]["errcode"] == "GK_SIGNUP_REFUSED"
    erased = gatekeeper.started.monitoring.registry.get_sample_value(
        "gatekeeper_retention_erased_total", {"kind": "requests"}
    )
    assert erased == 3

    # The tombstones: states, dates and who decided, for the audit and the statistics.
    for request_id, state in (
        (rejected_id, "rejected"),
        (withdrawn_id, "withdrawn"),
        (unconfirmed_id, "expired"),
    ):
        tombstone = await wait_for_state(gatekeeper, request_id, state)
        assert tombstone["id"] == request_id
    stats = await alice.reply_to(room_id, "!stats", BOT)
    assert "This week: 4 requests (1 expired, 1 pending, 1 rejected, 1 withdrawn)" in stats
    audit = await alice.reply_to(room_id, "!audit 20", BOT)
    assert f"{rejected_id}: pending → rejected" in audit


async def test_the_sweep_erases_a_deactivated_account_and_keeps_its_name(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(registration={"require_email_confirmation": False})
    gone = await active_account(gatekeeper, "gon")
    request_id = await request_id_of(gatekeeper, gone)
    users = f"/api/admin/users/{gone.user_id}"
    status, _ = await api(
        gatekeeper,
        "POST",
        f"{users}/deactivate",
        {"erase": True, "reason": "wants out zq7"},
        admin=True,
    )
    assert status == 200
    await wait_for_state(gatekeeper, request_id, "deactivated")
    await all_mail_sent(gatekeeper)
    await gatekeeper.db.execute(
        "UPDATE registration_request SET updated_at = updated_at - $1", 31 * DAY_MS
    )
    await gatekeeper.sweep_retention()

    after = await database_text(gatekeeper.db)
    assert gone.email not in after
    assert "wants out zq7" not in after
    # The homeserver never gives the name to anyone again; the moderation view keeps it.
    status, body = await api(gatekeeper, "GET", users, admin=True)
    assert status == 200
    assert body["registration"]["id"] == request_id
    assert body["registration"]["state"] == "deactivated"
    assert body["registration"]["email"] != gone.email
