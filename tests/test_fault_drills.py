"""Fault drills (issue 8): each breaks a real peer and proves nothing lost, nothing doubled.

"Nothing lost, nothing doubled" is judged by what people see: the admin room's notice
and its edits, the mails captured by the SMTP server, the Matrix account (it exists once
and the applicant's password opens it), and the request's row and audit history.

Where each drill lives:
- (a) Synapse down for a while during approvals:
  tests/test_provisioning_faults.py::test_synapse_down_during_approval (both databases).
- (b) PostgreSQL restarted under load: here, test_postgres_restart_under_load, on a
  private cluster (harness/postgres.py) so the shared server is never touched.
- (c) SMTP down: tests/test_registration_flow.py::test_mail_waits_for_smtp; here,
  test_mail_queued_while_smtp_is_down_survives_a_restart (the outbox across a restart).
- (d) Gatekeeper SIGKILLed: tests/test_provisioning_faults.py::
  test_sigkill_between_approval_and_account (killed while the request waits in the queue);
  here, test_sigkill_while_synapse_creates_the_account (killed with the call in flight,
  after Synapse made the account but before its answer arrived).
- (e) a Synapse that hangs: here, test_hanging_synapse_times_out_and_is_retried
  (harness/stalling_proxy.py in front of the real Synapse).
- (f) duplicate and out-of-order appservice transactions: tests/test_appservice.py
  (a retried transaction, also after a restart; a reused transaction ID); here,
  test_out_of_order_and_repeated_decisions_count_once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from mautrix.types import RoomID

from gatekeeper.appservice.runtime import leadership
from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import Event, MatrixUser, wait_until
from harness.postgres import PostgresError, PrivatePostgres
from harness.stalling_proxy import StallingProxy
from tests.conftest import (
    ADMIN_API_TOKEN,
    HANG_TIMEOUT_S,
    Homeserver,
    MailCatcher,
    StartGatekeeper,
    gatekeeper_config,
    missing_peer,
)
from tests.flows import (
    BOT,
    Applicant,
    WebClient,
    admin_room,
    api,
    can_log_in,
    fake_event,
    is_edit_of,
    is_notice_for,
    link_token,
    new_applicant,
    room_caught_up,
    sign_up,
    web_url,
)
from tests.test_appservice import command_event, push_transaction

ADMIN = {"Authorization": f"Bearer {ADMIN_API_TOKEN}"}
# Retry for as long as a drill lasts: a drill is about outages, not about giving up.
PATIENT = {"require_email_confirmation": False, "provisioning_max_attempts": 1000}
SHARED_SECRET_REGISTRATION = b"POST /_synapse/admin/v1/register"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# --- what people see ---------------------------------------------------------------------


async def admin_get(gatekeeper_url: str, path: str) -> tuple[int, Any]:
    """A GET of the admin API; (0, None) while nothing listens."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gatekeeper_url}/api/admin{path}", headers=ADMIN) as response,
        ):
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, None


async def admin_post(gatekeeper_url: str, path: str) -> int:
    """A POST of the admin API, as a script would send it; 0 when the connection failed."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{gatekeeper_url}/api/admin{path}", headers=ADMIN) as response,
        ):
            return response.status
    except aiohttp.ClientError:
        return 0


async def request_view(gatekeeper_url: str, request_id: str) -> dict[str, Any]:
    status, body = await admin_get(gatekeeper_url, f"/registrations/{request_id}")
    assert status == 200, body
    return dict(body)


async def in_state(gatekeeper_url: str, request_id: str, state: str) -> dict[str, Any] | None:
    view = await request_view(gatekeeper_url, request_id)
    return view if view["state"] == state else None


async def retried_after_timeouts(gatekeeper_url: str, request_id: str) -> dict[str, Any] | None:
    """Queued again (retriable) after two or more attempts that ran into the timeout."""
    view = await request_view(gatekeeper_url, request_id)
    retriable = view["state"] == "approved" and view["provisionAttempts"] >= 2
    return view if retriable and "no answer within" in str(view["lastError"]) else None


def bot_edits_of(admin: MatrixUser, notice: Event, containing: str) -> list[Event]:
    """Edits of `notice` not yet consumed by a wait_for, whose text contains `containing`."""
    return [e for e in admin.timeline if is_edit_of(notice["event_id"], containing)(e)]


def bot_answers(admin: MatrixUser, room_id: RoomID, containing: str) -> list[str]:
    return [
        str(e["content"]["body"])
        for e in admin.timeline
        if e["room_id"] == room_id
        and e["sender"] == BOT
        and containing in e["content"].get("body", "")
        and "m.new_content" not in e["content"]
    ]


async def account_created_once(
    gatekeeper_url: str,
    request_id: str,
    applicant: Applicant,
    synapse: Homeserver,
    admin: MatrixUser,
    notice: Event,
) -> dict[str, Any]:
    """Active, approved and created once in the history, the account opens with the
    applicant's password, and the admins saw the outcome once. Returns the request."""
    view = await wait_until(lambda: in_state(gatekeeper_url, request_id, "active"), timeout=60)
    assert view["userId"] == applicant.user_id
    transitions = [(entry["from"], entry["to"]) for entry in view["history"]]
    assert transitions.count(("pending", "approved")) == 1
    assert [to for _, to in transitions].count("active") == 1
    assert await can_log_in(synapse.url, applicant)
    await admin.wait_for(is_edit_of(notice["event_id"], "created"), timeout=30)
    await room_caught_up(admin, RoomID(notice["room_id"]))
    assert bot_edits_of(admin, notice, "created") == []
    return view


def one_mail(smtp: MailCatcher, recipient: str, containing: str) -> None:
    """Exactly one mail to `recipient`, and it is the expected one. Call it once the outbox
    is drained: a mail marked sent is never sent again."""
    mails = smtp.to(recipient)
    assert len(mails) == 1, [str(m["Subject"]) for m in mails]
    assert containing in str(mails[0]["Subject"]) + mails[0].get_content()


async def outbox_drained(gatekeeper: Gatekeeper) -> bool:
    assert gatekeeper.mailer is not None
    return await gatekeeper.mailer.pending_count() == 0


# --- (e) a Synapse that hangs ------------------------------------------------------------


@pytest.fixture
async def stalling_synapse(synapse: Homeserver) -> AsyncIterator[StallingProxy]:
    """The session's Synapse behind a proxy that the test can make hang."""
    proxy = StallingProxy("127.0.0.1", synapse.server.settings.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@SQLITE_ONLY
async def test_hanging_synapse_times_out_and_is_retried(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse: Homeserver,
    stalling_synapse: StallingProxy,
) -> None:
    gatekeeper = await start_gatekeeper(
        homeserver={"address": stalling_synapse.url, "request_timeout": HANG_TIMEOUT_S},
        registration=PATIENT,
    )
    url = web_url(gatekeeper)
    room_id = await admin_room(gatekeeper, alice)
    hana, notice, request_id = await noticed_request(gatekeeper, alice, room_id, "hana")

    stalling_synapse.hang()
    assert await admin_post(url, f"/registrations/{request_id}/approve") == 200
    # Each attempt ends at the timeout instead of hanging, and the request stays queued.
    view = await wait_until(lambda: retried_after_timeouts(url, request_id), timeout=30)
    assert f"no answer within {HANG_TIMEOUT_S:g} s" in view["lastError"]
    assert not await can_log_in(synapse.url, hana)

    stalling_synapse.forward()

    await account_created_once(url, request_id, hana, synapse, alice, notice)
    await smtp.wait_for(hana.email, "is ready")
    await wait_until(lambda: outbox_drained(gatekeeper))
    one_mail(smtp, hana.email, "is ready")


async def noticed_request(
    gatekeeper: Gatekeeper, admin: MatrixUser, room_id: RoomID, prefix: str
) -> tuple[Applicant, Event, str]:
    """A new applicant signs up; returns them, the notice the admins got, and the ID of
    their request as the admin API lists it."""
    applicant = new_applicant(prefix)
    assert (await sign_up(gatekeeper, applicant))[0] == 201
    notice = await admin.wait_for(is_notice_for(room_id, applicant))
    listing = await admin_get(web_url(gatekeeper), "/registrations")
    return applicant, notice, body_request_id(listing, applicant)


def body_request_id(listing: tuple[int, Any], applicant: Applicant) -> str:
    """The ID of the applicant's request in a `GET /api/admin/registrations` answer."""
    status, body = listing
    assert status == 200, body
    ids = [r["id"] for r in body["registrations"] if r["userName"] == applicant.localpart]
    assert len(ids) == 1, body
    return str(ids[0])


# --- (c) SMTP down, across a restart ------------------------------------------------------


@SQLITE_ONLY
async def test_mail_queued_while_smtp_is_down_survives_a_restart(
    start_gatekeeper: StartGatekeeper, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper()
    smtp.go_down()
    mia = new_applicant("mia")
    assert (await sign_up(gatekeeper, mia))[0] == 201
    await wait_until(lambda: failed_sends(gatekeeper))
    await gatekeeper.stop()

    gatekeeper = await start_gatekeeper()  # same database, SMTP still down
    await wait_until(lambda: failed_sends(gatekeeper, more_than=1))
    smtp.come_back()

    await smtp.wait_for(mia.email, "Confirm")
    await wait_until(lambda: outbox_drained(gatekeeper))
    one_mail(smtp, mia.email, "confirm your email")
    token = link_token(smtp.to(mia.email)[0], "confirm-email")
    assert await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": token}) == (
        200,
        {"status": "newly-confirmed"},
    )


async def failed_sends(gatekeeper: Gatekeeper, more_than: int = 0) -> bool:
    attempts = await gatekeeper.db.fetchval("SELECT MAX(attempts) FROM mail_outbox")
    return attempts is not None and int(attempts) > more_than


# --- (f) duplicate and out-of-order appservice transactions -------------------------------


def reaction_event(room_id: RoomID, sender: str, target: str, key: str) -> dict[str, object]:
    relation = {"rel_type": "m.annotation", "event_id": target, "key": key}
    return fake_event("m.reaction", room_id, sender, {"m.relates_to": relation})


@SQLITE_ONLY
async def test_out_of_order_and_repeated_decisions_count_once(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse: Homeserver,
) -> None:
    gatekeeper = await start_gatekeeper(registration=PATIENT)
    url = web_url(gatekeeper)
    room_id = await admin_room(gatekeeper, alice)
    otto, notice, request_id = await noticed_request(gatekeeper, alice, room_id, "otto")
    approval = reaction_event(room_id, alice.user_id, notice["event_id"], "✅")
    rejection = command_event(room_id, alice.user_id, f"!reject {request_id} one account each")

    # Transaction 40 (the ✅) failed once; Synapse delivers 41 (the rejection) before its
    # retry of 40, and then, its answers lost, both once more.
    for txn_id, event in (("41", rejection), ("40", approval), ("41", rejection), ("40", approval)):
        await push_transaction(gatekeeper, txn_id, [event])
    await alice.wait_for(is_edit_of(notice["event_id"], "Rejected by"))
    await room_caught_up(alice, room_id)

    # What came first counts, once; what came late is refused, once.
    assert bot_answers(alice, room_id, f"Rejected {request_id}") == [
        f"Rejected {request_id} ({otto.user_id})."
    ]
    assert bot_answers(alice, room_id, "cannot be decided") == [
        f"{request_id} cannot be decided any more: it is rejected."
    ]
    assert bot_edits_of(alice, notice, "") == []
    view = await request_view(url, request_id)
    assert view["state"] == "rejected"
    assert [entry["to"] for entry in view["history"]] == ["pending", "rejected"]
    assert not await can_log_in(synapse.url, otto)
    await smtp.wait_for(otto.email, "one account each")
    await wait_until(lambda: outbox_drained(gatekeeper))
    one_mail(smtp, otto.email, "declined")


def signup_body(applicant: Applicant) -> dict[str, str]:
    return {
        "userName": applicant.localpart,
        "email": applicant.email,
        "password": applicant.password,
        "language": "en",
    }


# --- (d) SIGKILL with the account creation in flight --------------------------------------


@contextmanager
def gatekeeper_process(config_file: Path, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Gatekeeper as operators run it; the test kills it or stops it itself."""
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "-c", str(config_file)], stdout=log, stderr=log
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def sqlite_value(path: Path, query: str) -> Any:
    """One value from the running process's SQLite database (WAL: readers do not block it)."""
    with sqlite3.connect(path, timeout=10) as connection:
        row = connection.execute(query).fetchone()
    return None if row is None else row[0]


async def process_outbox_drained(database: Path) -> bool:
    query = "SELECT COUNT(*) FROM mail_outbox WHERE sent_at IS NULL"
    return await asyncio.to_thread(sqlite_value, database, query) == 0


async def test_sigkill_while_synapse_creates_the_account(
    synapse: Homeserver,
    alice: MatrixUser,
    smtp: MailCatcher,
    stalling_synapse: StallingProxy,
    tmp_path: Path,
) -> None:
    database = tmp_path / "gatekeeper.db"
    config = gatekeeper_config(
        synapse,
        f"sqlite:{database}",
        tmp_path,
        smtp.port,
        # Longer than the drill: the killed process is still waiting for the lost answer.
        homeserver={"address": stalling_synapse.url, "request_timeout": 60.0},
        registration=PATIENT,
    )
    url = f"http://127.0.0.1:{config.web.port}"
    config_file, log_file = tmp_path / "config.yaml", tmp_path / "gatekeeper.log"
    kai = new_applicant("kai")

    with gatekeeper_process(config_file, log_file) as first:
        await wait_until(lambda: serving(url), timeout=60)
        room_id = RoomID(
            sqlite_value(database, "SELECT value FROM bot_state WHERE key='admin_room_id'")
        )
        await alice.wait_for_invite(room_id)
        await alice.api.join_room_by_id(room_id)
        async with WebClient(url) as client:
            assert (await client.post("/api/auth/sign-up", signup_body(kai)))[0] == 201
        notice = await alice.wait_for(is_notice_for(room_id, kai))
        request_id = body_request_id(await admin_get(url, "/registrations"), kai)

        stalling_synapse.lose_answers_to(SHARED_SECRET_REGISTRATION)
        assert await admin_post(url, f"/registrations/{request_id}/approve") == 200
        # Synapse made the account; Gatekeeper, still waiting for the answer, dies now.
        await wait_until(lambda: can_log_in(synapse.url, kai), timeout=30)
        assert (await request_view(url, request_id))["state"] == "provisioning"
        first.send_signal(signal.SIGKILL)
        first.wait(10)

    stalling_synapse.forward()
    with gatekeeper_process(config_file, log_file) as second:
        await wait_until(lambda: serving(url), timeout=60)
        view = await account_created_once(url, request_id, kai, synapse, alice, notice)
        assert "interrupted; resumed" in [e["reason"] for e in view["history"]]
        await smtp.wait_for(kai.email, "is ready")
        await wait_until(lambda: process_outbox_drained(database))
        one_mail(smtp, kai.email, "is ready")
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0


async def serving(gatekeeper_url: str) -> bool:
    return (await admin_get(gatekeeper_url, "/registrations"))[0] == 200


# --- (b) PostgreSQL restarted under load --------------------------------------------------


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A PostgreSQL of the test's own, which it may restart (never the shared one)."""
    cluster = PrivatePostgres()
    try:
        await cluster.start()
    except (PostgresError, OSError, KeyError) as error:  # KeyError: no `postgres` user
        await cluster.destroy()
        missing_peer(f"cannot start a private PostgreSQL cluster: {error}")
    try:
        yield cluster
    finally:
        await cluster.destroy()


async def until_status(
    expected: int, attempt: Any, deadline_seconds: float = 60.0
) -> tuple[int, list[int]]:
    """Repeat `attempt` (as a person or script would after an error) until it answers
    `expected`; return that and every status seen before it."""
    seen: list[int] = []
    deadline = time.monotonic() + deadline_seconds
    while (status := await attempt()) != expected:
        seen.append(status)
        assert time.monotonic() < deadline, f"still {seen[-5:]} after {deadline_seconds} s"
        await asyncio.sleep(0.1)
    return status, seen


@pytest.mark.postgres
async def test_postgres_restart_under_load(
    synapse: Homeserver,
    alice: MatrixUser,
    smtp: MailCatcher,
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The active role's connection is checked often, so the restart always costs the
    # process its role and the drill covers standing down and taking over again (with
    # the usual 5 s, a short restart is often over before anyone looks).
    monkeypatch.setattr(leadership, "HEARTBEAT_SECONDS", 0.5)
    server = await asyncpg.connect(private_postgres.url)
    await server.execute('CREATE DATABASE "gatekeeper"')
    await server.close()
    config = gatekeeper_config(
        synapse,
        private_postgres.database_url("gatekeeper"),
        tmp_path,
        smtp.port,
        registration=PATIENT,
    )
    gatekeeper = Gatekeeper(config)
    await gatekeeper.start()
    try:
        with caplog.at_level(logging.INFO, logger="gatekeeper"):
            await drill_postgres_restart(gatekeeper, private_postgres, synapse, alice, smtp)
        assert "Lost the connection that holds the active role" in caplog.text
        assert gatekeeper.role == "active"
        # The pool came back whole: as many queries at once as it has connections.
        await every_pool_connection_answers(gatekeeper, config.database.max_connections)
    finally:
        await gatekeeper.stop()
    # Nothing still held a connection: the pool closed without being forced.
    assert "did not close" not in caplog.text


async def every_pool_connection_answers(gatekeeper: Gatekeeper, connections: int) -> None:
    async def one_query() -> None:
        await gatekeeper.db.execute("SELECT pg_sleep(0.2)")

    await asyncio.wait_for(asyncio.gather(*(one_query() for _ in range(connections))), 10)


async def drill_postgres_restart(
    gatekeeper: Gatekeeper,
    cluster: PrivatePostgres,
    synapse: Homeserver,
    alice: MatrixUser,
    smtp: MailCatcher,
) -> None:
    url = web_url(gatekeeper)
    room_id = await admin_room(gatekeeper, alice)
    approved = [new_applicant(f"pg{n}") for n in range(4)]
    for applicant in approved:
        assert (await sign_up(gatekeeper, applicant))[0] == 201
    notices = {a: await alice.wait_for(is_notice_for(room_id, a)) for a in approved}
    listing = await admin_get(url, "/registrations")
    request_ids = {a: body_request_id(listing, a) for a in approved}
    late = [new_applicant(f"pglate{n}") for n in range(4)]

    async def sign_up_once_through(applicant: Applicant) -> list[int]:
        async def attempt() -> int:
            async with WebClient(url) as client:
                try:
                    return (await client.post("/api/auth/sign-up", signup_body(applicant)))[0]
                except aiohttp.ClientError:
                    return 0

        return (await until_status(201, attempt))[1]

    async def approve(applicant: Applicant) -> list[int]:
        path = f"/registrations/{request_ids[applicant]}/approve"
        return (await until_status(200, lambda: admin_post(url, path)))[1]

    # Approvals and new sign-ups in flight while the database goes away and comes back.
    load = asyncio.gather(*(approve(a) for a in approved), *(sign_up_once_through(a) for a in late))
    await asyncio.sleep(0)  # every request is on its way before the database goes down
    await cluster.restart()
    failures = await load

    # A refused attempt left nothing behind: its repetition was not "name taken" (409).
    assert all(409 not in seen for seen in failures), failures
    # While the database was away, clients were told to try again (503), never a crash.
    assert all(set(seen) <= {0, 503} for seen in failures), failures
    for applicant in approved:
        await account_created_once(
            url, request_ids[applicant], applicant, synapse, alice, notices[applicant]
        )
    for applicant in late:
        await alice.wait_for(is_notice_for(room_id, applicant))
    listing = await admin_get(url, "/registrations")
    assert sorted(r["userName"] for r in listing[1]["registrations"]) == sorted(
        a.localpart for a in late
    )
    await room_caught_up(alice, room_id)
    assert not any(bot_answers(alice, room_id, a.user_id) for a in late)  # one notice each
    for applicant in approved:
        await smtp.wait_for(applicant.email, "is ready")
    await wait_until(lambda: outbox_drained(gatekeeper), timeout=60)
    for applicant in approved:
        one_mail(smtp, applicant.email, "is ready")
