"""The other seed's registration API, `/registrations/`, against a real Synapse: a client
written for it signs up, is decided on, names its account and logs in; it needs no cookie
and no CSRF token, and a cookie session alone opens nothing."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
from mautrix.util.async_db.connection import LoggingConnection

from gatekeeper.appservice.domain.registration_request import RegistrationRequest, State
from gatekeeper.appservice.domain.registrations import Transition
from gatekeeper.appservice.domain.seed_registrations import CREATION_LEASE_MS, SEED_STATUS
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.timeutil import now_ms
from harness.matrix_user import MatrixUser
from tests.conftest import (
    ADMIN_API_TOKEN,
    SERVER_NAME,
    Homeserver,
    MailCatcher,
    StartGatekeeper,
)
from tests.flows import (
    active_account,
    api,
    can_log_in,
    is_edit_of,
    link_token,
    logged_in,
    new_applicant,
    started_with_room,
    web_url,
)

NO_CONFIRMATION = {"require_email_confirmation": False}


def basic(rid: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{rid}:{token}".encode()).decode()}


async def seed(
    gatekeeper: Gatekeeper,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request as a client written for the seed sends it: no cookie, no CSRF token."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, web_url(gatekeeper) + path, json=body, headers=headers or {}
        ) as response,
    ):
        text = await response.text()
        return response.status, (await response.json() if text else None)


async def registered(gatekeeper: Gatekeeper, email: str) -> dict[str, Any]:
    status, body = await seed(gatekeeper, "POST", "/registrations/", {"email": email})
    assert status == 201, body
    return dict(body)


async def approved(gatekeeper: Gatekeeper, email: str) -> dict[str, Any]:
    created = await registered(gatekeeper, email)
    status, _ = await seed(
        gatekeeper,
        "PUT",
        f"/registrations/{created['rid']}/",
        {"status": "approved"},
        basic(created["rid"], ADMIN_API_TOKEN),
    )
    assert status == 200
    return created


def test_every_state_has_the_seeds_words() -> None:
    assert set(SEED_STATUS) == set(State)
    assert {status for status, _ in SEED_STATUS.values()} == {"pending", "approved", "rejected"}
    assert {m for _, m in SEED_STATUS.values()} == {"pending", "processing", "success", "failed"}


async def test_from_an_email_to_a_matrix_login_with_the_returned_password(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher, synapse: Homeserver
) -> None:
    gatekeeper = await start_gatekeeper()
    ann = new_applicant("seed")
    status, created = await seed(gatekeeper, "POST", "/registrations/", {"email": ann.email})
    assert status == 201
    assert {k: created[k] for k in ("username", "email", "password", "status")} == {
        "username": "",
        "email": ann.email,
        "password": "",
        "status": "pending",
    }
    assert created["matrix_status"] == "pending"
    assert created["created"]
    assert created["modified"]
    assert created["token"]
    rid, token = created["rid"], created["token"]
    # Only a hash of the requester's token is kept.
    stored = await gatekeeper.db.fetchval(
        "SELECT token_hash FROM seed_registration WHERE request_id=$1", rid
    )
    assert stored
    assert token not in stored

    # The sign-up's confirmation mail; it names no user yet.
    mail = await smtp.wait_for(ann.email, "confirm")
    assert "name chosen after approval" in mail.get_content()
    confirm = link_token(mail, "confirm-email")
    assert (await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": confirm}))[1] == {
        "status": "newly-confirmed"
    }

    user = basic(rid, token)
    status, _ = await seed(
        gatekeeper,
        "PATCH",
        f"/registrations/{rid}/",
        {"matrix_status": "processing", "username": ann.localpart},
        user,
    )
    assert status == 409  # not approved yet
    status, decided = await seed(
        gatekeeper,
        "PUT",
        f"/registrations/{rid}/",
        {"status": "approved"},
        basic(rid, ADMIN_API_TOKEN),
    )
    assert (status, decided["status"], decided["email"]) == (200, "approved", None)
    # Approved without a name: the provisioner leaves it alone.
    assert (await gatekeeper.store.get(rid)).state is State.APPROVED  # type: ignore[union-attr]

    status, named = await seed(
        gatekeeper,
        "PATCH",
        f"/registrations/{rid}/",
        {"matrix_status": "processing", "username": ann.localpart, "email": ann.email},
        user,
    )
    assert status == 200, named
    assert (named["status"], named["matrix_status"]) == ("approved", "success")
    assert named["username"] == ann.localpart
    password = named["password"]
    assert password
    assert await can_log_in(synapse.url, ann, password)
    # Never stored, in any form; a later look shows none.
    row = await gatekeeper.db.fetchrow("SELECT * FROM registration_request WHERE id=$1", rid)
    assert row is not None
    assert row["password_encrypted"] is None
    assert row["password_hash"] == ""
    assert password not in str(dict(row))
    status, shown = await seed(gatekeeper, "GET", f"/registrations/{rid}/", headers=user)
    assert (status, shown["password"], shown["matrix_status"]) == (200, None, "success")
    # The name is chosen once.
    status, _ = await seed(
        gatekeeper,
        "PATCH",
        f"/registrations/{rid}/",
        {"matrix_status": "processing", "username": "other-" + ann.localpart},
        user,
    )
    assert status == 409
    await smtp.wait_for(ann.email, "is ready")


async def test_the_status_codes_of_every_call(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    for bad in ({}, {"email": "not an address"}, {"email": 42}):
        status, body = await seed(gatekeeper, "POST", "/registrations/", bad)
        assert (status, body["field"]) == (422, "email"), bad
    created = await registered(gatekeeper, new_applicant("codes").email)
    rid, path = created["rid"], f"/registrations/{created['rid']}/"
    manager, user = basic(rid, ADMIN_API_TOKEN), basic(rid, created["token"])

    for method in ("GET", "PUT", "PATCH", "DELETE"):
        assert (await seed(gatekeeper, method, path))[0] == 401, method
        assert (await seed(gatekeeper, method, path, {}, basic(rid, "wrong")))[0] == 403, method
    assert (await seed(gatekeeper, "GET", path, headers={"Authorization": "Basic !!"}))[0] == 401
    assert (
        await seed(
            gatekeeper,
            "GET",
            "/registrations/nosuchid/",
            headers=basic("nosuchid", ADMIN_API_TOKEN),
        )
    )[0] == 404

    status, minimal = await seed(gatekeeper, "GET", path, headers=manager)
    assert status == 200
    assert (minimal["username"], minimal["email"], minimal["password"]) == (None, None, None)
    assert (minimal["status"], minimal["matrix_status"]) == ("pending", "pending")
    status, full = await seed(gatekeeper, "GET", path, headers=user)
    assert (status, full["email"], full["username"]) == (200, created["email"], "")

    # Only the manager decides, only with the seed's words; only the requester names.
    assert (await seed(gatekeeper, "PUT", path, {"status": "approved"}, user))[0] == 403
    for word in ("accepted", "pending", None, 1):
        status, body = await seed(gatekeeper, "PUT", path, {"status": word}, manager)
        assert (status, body["field"]) == (422, "status"), word
    named = {"matrix_status": "processing", "username": "whoever"}
    assert (await seed(gatekeeper, "PATCH", path, named, manager))[0] == 403
    assert (await seed(gatekeeper, "DELETE", path, None, manager))[0] == 403

    status, rejected = await seed(gatekeeper, "PUT", path, {"status": "rejected"}, manager)
    assert (status, rejected["status"]) == (200, "rejected")
    assert (await seed(gatekeeper, "PATCH", path, named, user))[0] == 409

    approved_one = await approved(gatekeeper, new_applicant("codes2").email)
    path2, user2 = (
        f"/registrations/{approved_one['rid']}/",
        basic(approved_one["rid"], approved_one["token"]),
    )
    for body in (
        {"matrix_status": "success", "username": "fine"},
        {"matrix_status": "processing"},
        {"matrix_status": "processing", "username": "Not Valid!"},
        {"matrix_status": "processing", "username": "fine", "email": "other@example.org"},
    ):
        assert (await seed(gatekeeper, "PATCH", path2, body, user2))[0] == 422, body


async def test_a_managers_decision_is_seen_in_the_admin_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser
) -> None:
    gatekeeper, room_id = await started_with_room(
        start_gatekeeper, alice, registration=NO_CONFIRMATION
    )
    email = new_applicant("room").email
    created = await registered(gatekeeper, email)

    def is_nameless_notice(event: dict[str, Any]) -> bool:
        body = event.get("content", {}).get("body", "")
        return (
            event["room_id"] == room_id
            and body.startswith(f"Sign-up request {created['rid']}:")
            and "no user name yet" in body
        )

    notice = await alice.wait_for(is_nameless_notice)
    rid = created["rid"]
    status, _ = await seed(
        gatekeeper,
        "PUT",
        f"/registrations/{rid}/",
        {"status": "rejected"},
        basic(rid, ADMIN_API_TOKEN),
    )
    assert status == 200
    await alice.wait_for(is_edit_of(notice["event_id"], "Rejected by registrations-api"))


async def test_a_withdrawal_leaves_no_personal_data(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    email = new_applicant("gone").email
    created = await registered(gatekeeper, email)
    await smtp.wait_for(email, "confirm")
    rid, user = created["rid"], basic(created["rid"], created["token"])
    async with (
        aiohttp.ClientSession() as session,
        session.delete(web_url(gatekeeper) + f"/registrations/{rid}/", headers=user) as response,
    ):
        assert response.status == 204
        assert await response.read() == b""
    row = await gatekeeper.db.fetchrow("SELECT * FROM registration_request WHERE id=$1", rid)
    assert row is not None
    assert row["status"] == "withdrawn"
    # The tombstone of retention (appservice/storage/retention.py): nothing tells who asked.
    assert email.lower() not in str(dict(row)).lower()
    assert "@" not in row["email"]
    assert (row["reason"], row["pending_email"]) == ("", None)
    assert not row["localpart"]
    tokens = "SELECT COUNT(*) FROM seed_registration WHERE request_id=$1"
    assert await gatekeeper.db.fetchval(tokens, rid) == 0
    assert (
        await gatekeeper.db.fetchval(
            "SELECT COUNT(*) FROM mail_outbox WHERE LOWER(recipient)=LOWER($1)", email
        )
        == 0
    )
    # The token opens nothing any more.
    assert (await seed(gatekeeper, "GET", f"/registrations/{rid}/", headers=user))[0] == 403


async def test_no_cookie_or_csrf_is_needed_and_a_cookie_session_alone_opens_nothing(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    # Every call above went without cookies or a CSRF token; with a logged-in browser's
    # cookies and its CSRF token, but no Authorization header, the API says 401.
    created = await registered(gatekeeper, new_applicant("cookie").email)
    holder = await active_account(gatekeeper, "holder")
    async with await logged_in(gatekeeper, holder) as client:
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            status, _ = await client.request(
                method, f"/registrations/{created['rid']}/", {"status": "approved"}
            )
            assert status == 401, method


async def test_the_openapi_document_describes_the_seed_paths(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper()
    _, document = await api(gatekeeper, "GET", "/api/openapi.json")
    assert set(document["paths"]["/registrations/"]) == {"post"}
    assert document["paths"]["/registrations/"]["post"]["security"] == []
    operations = document["paths"]["/registrations/{rid}/"]
    assert set(operations) == {"get", "put", "patch", "delete"}
    assert "204" in operations["delete"]["responses"]
    put = operations["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert put["properties"]["status"]["enum"] == ["approved", "rejected"]
    assert operations["patch"]["security"] == [{"registrationToken": []}]


async def test_the_provisioner_leaves_a_running_patch_creation_alone(
    start_gatekeeper: StartGatekeeper,
) -> None:
    """The PATCH makes the account in the web process, with a password only it has: the
    provisioner must not take it for an interrupted round of its own (and make the account
    without that password), unless the PATCH's lease has run out (the process died)."""
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    created = await approved(gatekeeper, new_applicant("lease").email)
    rid = created["rid"]
    # What the PATCH leaves while it waits for the homeserver: named, being provisioned,
    # under its lease, in one transaction (as SeedRegistrations.name_and_create does).

    async def hold(conn: LoggingConnection, _: RegistrationRequest) -> None:
        await conn.execute(
            "UPDATE seed_registration SET creating_until=$2 WHERE request_id=$1",
            rid,
            now_ms() + CREATION_LEASE_MS,
        )

    started = await gatekeeper.registrations.apply(
        rid,
        Transition.START_PROVISIONING,
        "applicant",
        extra={"localpart": "lease-" + rid},
        after=hold,
    )
    assert started.changed
    assert await gatekeeper.registrations.resume_interrupted() == 0
    assert (await seed_state(gatekeeper, rid)) is State.PROVISIONING

    # The process died mid-way: once the lease is over, it is an interrupted round.
    await gatekeeper.db.execute(
        "UPDATE seed_registration SET creating_until=$2 WHERE request_id=$1", rid, now_ms() - 1
    )
    await gatekeeper.registrations.resume_interrupted()
    history = await gatekeeper.store.history(rid)
    assert [e.reason for e in history].count("interrupted; resumed") == 1


async def seed_state(gatekeeper: Gatekeeper, rid: str) -> State:
    request = await gatekeeper.store.get(rid)
    assert request is not None
    return request.state


async def test_the_confirm_page_says_the_name_comes_after_approval_in_both_languages(
    start_gatekeeper: StartGatekeeper, page: Any, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    email = new_applicant("page").email
    await registered(gatekeeper, email)
    mail = await smtp.wait_for(email, "confirm")
    confirm = link_token(mail, "confirm-email")
    base = web_url(gatekeeper)

    await page.goto(f"{base}/confirm-email?token={confirm}&lang=en")
    assert await page.text_content("#what") == (
        "Someone – hopefully you – asked for the Matrix account"
        f" @…:{SERVER_NAME} (name chosen after approval) with the email address {email}."
    )
    await page.goto(f"{base}/confirm-email?token={confirm}&lang=de")
    assert f"@…:{SERVER_NAME} (Name wird nach der Freigabe gewählt)" in (
        await page.text_content("#what") or ""
    )


async def test_the_gates_blocks_and_domain_lists_hold_here_too(
    start_gatekeeper: StartGatekeeper,
) -> None:
    gatekeeper = await start_gatekeeper(
        registration={**NO_CONFIRMATION, "denied_email_domains": ["spam.example"]}
    )
    status, body = await seed(gatekeeper, "POST", "/registrations/", {"email": "x@spam.example"})
    assert (status, body["errcode"]) == (403, "GK_SIGNUP_REFUSED")
    assert await gatekeeper.db.fetchval("SELECT COUNT(*) FROM seed_registration") == 0

    # A name block waits for the name: the request is made, its PATCH is refused.
    await gatekeeper.started.gate.add_block("username", "bad-*", "@alice:example.org", None)
    created = await approved(gatekeeper, new_applicant("blocked").email)
    status, body = await seed(
        gatekeeper,
        "PATCH",
        f"/registrations/{created['rid']}/",
        {"matrix_status": "processing", "username": "bad-name"},
        basic(created["rid"], created["token"]),
    )
    assert (status, body["errcode"]) == (403, "GK_SIGNUP_REFUSED")
    assert await seed_state(gatekeeper, created["rid"]) is State.APPROVED
