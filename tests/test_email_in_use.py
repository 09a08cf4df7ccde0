"""One email, one request or account: a second sign-up with it is answered, never stored."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.database import upgrade
from gatekeeper.appservice.timeutil import now_ms
from tests.conftest import MailCatcher, StartGatekeeper
from tests.flows import (
    Applicant,
    WebClient,
    active_account,
    all_mail_sent,
    api,
    link_token,
    logged_in,
    new_applicant,
    pass_time,
    request_id_of,
    sign_up,
)
from tests.test_database import migration_package  # noqa: F401 (a fixture)

NO_CONFIRMATION = {"require_email_confirmation": False}


def same_email(owner: Applicant, prefix: str) -> Applicant:
    """Another wished name with `owner`'s address."""
    return Applicant(f"{prefix}-{secrets.token_hex(4)}", owner.email)


async def stored(gatekeeper: Gatekeeper, applicant: Applicant) -> int:
    return len(await gatekeeper.store.search(applicant.localpart))


async def test_an_accounts_email_cannot_make_a_second_account(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, web={"trusted_proxies": ["127.0.0.0/8"]}
    )
    alice = await active_account(gatekeeper, "alice")
    alice2 = same_email(alice, "alice2")

    # The answer a new address gets: nothing tells that the address is in use.
    assert await sign_up(gatekeeper, alice2) == (
        201,
        {"status": "pending", "userId": alice2.user_id},
    )
    assert await stored(gatekeeper, alice2) == 0
    # Two more tries from other client addresses: still one note to the owner.
    for n in (1, 2):
        async with WebClient(gatekeeper) as client:
            body = {
                "userName": f"alice{n + 2}-{secrets.token_hex(4)}",
                "email": alice.email.upper(),
                "password": alice.password,
                "language": "en",
            }
            headers = {"X-Forwarded-For": f"198.51.100.{n}"}
            assert (await client.request("POST", "/api/auth/sign-up", body, headers))[0] == 201

    note = await smtp.wait_for(alice.email, "tried to use your email address")
    text = note.get_content()
    assert alice2.user_id in text
    assert alice.user_id in text
    reset_token = link_token(note, "reset-password")
    await all_mail_sent(gatekeeper)
    notes = [m for m in smtp.to(alice.email) if "tried to use" in str(m["Subject"])]
    assert len(notes) == 1

    # Alice still logs in with her password, and her reset link is hers.
    await (await logged_in(gatekeeper, alice)).session.close()
    status, body = await api(
        gatekeeper,
        "POST",
        "/api/auth/reset-password",
        {"email": alice.email, "token": reset_token, "newPassword": "another fine passphrase 7"},
    )
    assert status == 200
    assert body["status"] != "invalid-token"


async def test_an_unconfirmed_requests_email_is_held(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    ann = new_applicant("ann")
    assert (await sign_up(gatekeeper, ann))[0] == 201
    await smtp.wait_for(ann.email, "confirm")
    await pass_time(gatekeeper, 5 * 60_000)

    ann2 = same_email(ann, "ann2")
    assert await sign_up(gatekeeper, ann2) == (
        201,
        {"status": "unverified", "userId": ann2.user_id},
    )
    assert await stored(gatekeeper, ann2) == 0
    note = await smtp.wait_for(ann.email, "tried to use your email address")
    # The owner can see the open request, and withdraw it, from the status link.
    status_token = link_token(note, "status")
    status, body = await api(gatekeeper, "GET", f"/api/registration/status?token={status_token}")
    assert (status, body["userId"], body["status"]) == (200, ann.user_id, "unverified")


async def test_an_ended_request_frees_its_email(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    first = new_applicant("bea")

    async def sign_up_again(prefix: str) -> str:
        applicant = same_email(first, prefix)
        assert (await sign_up(gatekeeper, applicant))[0] == 201
        return await request_id_of(gatekeeper, applicant)

    assert (await sign_up(gatekeeper, first))[0] == 201
    request_id = await request_id_of(gatekeeper, first)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/reject", admin=True)

    request_id = await sign_up_again("rejected")
    assert await stored(gatekeeper, same_email(first, "held")) == 0
    await gatekeeper.registrations.withdraw(request_id)

    await sign_up_again("withdrawn")
    await gatekeeper.registrations.expire_older_than(now_ms() + 1)

    await sign_up_again("expired")


async def insert_request(
    db: Database, request_id: str, email: str, status: str, matrix_status: str, created_at: int
) -> None:
    await db.execute(
        "INSERT INTO registration_request (id, localpart, email, language, password_hash,"
        " password_encrypted, status, matrix_status, created_at, updated_at)"
        " VALUES ($1, $1, $2, 'en', 'hash', 'secret', $3, $4, $5, $5)",
        request_id,
        email,
        status,
        matrix_status,
        created_at,
    )


async def test_the_database_holds_one_live_request_per_email(database: Database) -> None:
    await upgrade(database)
    await insert_request(database, "one", "Dana@example.org", "approved", "success", 1)
    await insert_request(database, "gone", "dana@example.org", "withdrawn", "pending", 2)
    with pytest.raises(Exception, match=r"(?i)unique"):
        await insert_request(database, "two", "DANA@example.org", "unverified", "pending", 3)


async def test_upgrade_withdraws_open_requests_that_share_an_email(
    database: Database,
    migration_package: Path,  # noqa: F811
) -> None:
    shipped = Path(__file__).parent.parent / "migrations"
    for file in sorted(shipped.glob("00[1-7]_*.sql")):
        (migration_package / file.name).write_text(file.read_text())
    await upgrade(database, "test_migrations")
    # Left behind by the old code: requests that share an address.
    await insert_request(database, "account", "eve@example.org", "approved", "success", 2)
    await insert_request(database, "older", "EVE@example.org", "unverified", "pending", 1)
    await insert_request(database, "later", "eve@example.org", "pending", "pending", 3)
    await insert_request(database, "first", "fay@example.org", "unverified", "pending", 1)
    await insert_request(database, "second", "fay@example.org", "unverified", "pending", 2)
    await insert_request(database, "closed", "gil@example.org", "rejected", "pending", 1)
    await insert_request(database, "open", "gil@example.org", "pending", "pending", 2)

    before = now_ms()
    assert (await upgrade(database))[0] == 8  # then any later migrations
    after = now_ms()

    rows = await database.fetch("SELECT id, status, password_encrypted FROM registration_request")
    states = {row["id"]: row["status"] for row in rows}
    assert states == {
        "account": "approved",
        "older": "withdrawn",
        "later": "withdrawn",
        "first": "unverified",
        "second": "withdrawn",
        "closed": "rejected",
        "open": "pending",
    }
    assert all(row["password_encrypted"] is None for row in rows if row["status"] == "withdrawn")
    audit = await database.fetch(
        "SELECT request_id, actor, from_state, to_state FROM registration_audit ORDER BY request_id"
    )
    assert [tuple(row) for row in audit] == [
        ("later", "gatekeeper", "pending", "withdrawn"),
        ("older", "gatekeeper", "unverified", "withdrawn"),
        ("second", "gatekeeper", "unverified", "withdrawn"),
    ]
    # Stamped with the time of the upgrade, on both backends.
    stamps = await database.fetch(
        "SELECT at FROM registration_audit UNION ALL "
        "SELECT updated_at FROM registration_request WHERE status = 'withdrawn'"
    )
    assert len(stamps) == 6
    assert all(before <= row[0] <= after for row in stamps)


async def test_an_email_change_cannot_take_anothers_email(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    alice = await active_account(gatekeeper, "alice")
    bob = await active_account(gatekeeper, "bob")
    async with await logged_in(gatekeeper, bob) as client:
        await client.post("/api/user/settings/sudo", {"password": bob.password})
        # The usual answer; the address's owner hears of it instead of getting a link.
        assert await client.post(
            "/api/user/settings/sensitive/change-email", {"newEmail": alice.email}
        ) == (200, {})
        note = await smtp.wait_for(alice.email, "tried to use your email address")
        assert bob.user_id in note.get_content()
        await all_mail_sent(gatekeeper)
        assert not [m for m in smtp.to(alice.email) if "confirm-email-change" in m.get_content()]
        assert (await client.get("/api/user-info"))[0] == 200
    await (await logged_in(gatekeeper, alice)).session.close()
    await (await logged_in(gatekeeper, bob)).session.close()


async def test_an_email_taken_while_a_change_waits_is_not_adopted(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    cy = await active_account(gatekeeper, "cy")
    new_email = f"cy-new-{secrets.token_hex(3)}@example.org"
    async with await logged_in(gatekeeper, cy) as client:
        await client.post("/api/user/settings/sudo", {"password": cy.password})
        await client.post("/api/user/settings/sensitive/change-email", {"newEmail": new_email})
        token = link_token(await smtp.wait_for(new_email, "confirm"), "confirm-email-change")
        # Meanwhile someone signs up with the new address and it is held by their request.
        assert (await sign_up(gatekeeper, Applicant(f"dee-{secrets.token_hex(3)}", new_email)))[
            0
        ] == 201
        assert await client.post("/api/user/settings/confirm-email-change", {"token": token}) == (
            200,
            {"status": "no-change-in-progress", "email": cy.email},
        )
    await (await logged_in(gatekeeper, cy)).session.close()
