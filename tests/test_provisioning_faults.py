"""Account creation when things go wrong: nothing lost, nothing done twice."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import (
    ADMIN_API_TOKEN,
    Homeserver,
    MailCatcher,
    StartGatekeeper,
    gatekeeper_config,
)
from tests.flows import (
    BOT,
    WebClient,
    admin_room,
    api,
    can_log_in,
    is_edit_of,
    is_notice_for,
    new_applicant,
    request_id_of,
    sign_up,
    wait_for_state,
)

NO_CONFIRMATION = {"require_email_confirmation": False}


ADMIN = {"Authorization": f"Bearer {ADMIN_API_TOKEN}"}


async def admin_view(gatekeeper_url: str, request_id: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gatekeeper_url}/api/admin/registrations/{request_id}", headers=ADMIN
        ) as response,
    ):
        return dict(await response.json())


async def queued_after_attempts(gatekeeper_url: str, request_id: str, times: int) -> bool:
    """Approved, tried `times` times or more, and still waiting for the homeserver."""
    view = await admin_view(gatekeeper_url, request_id)
    return view["state"] == "approved" and int(str(view["provisionAttempts"])) >= times


async def test_synapse_down_during_approval(
    start_gatekeeper: StartGatekeeper,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse_restarts: Homeserver,
) -> None:
    synapse = synapse_restarts
    gatekeeper = await start_gatekeeper(
        registration={**NO_CONFIRMATION, "provisioning_max_attempts": 1000}
    )
    room_id = await admin_room(gatekeeper, alice)
    ivy = new_applicant("ivy")
    await sign_up(gatekeeper, ivy)
    notice = await alice.wait_for(is_notice_for(room_id, ivy))
    request_id = await request_id_of(gatekeeper, ivy)

    await synapse.server.stop()
    status, _ = await api(
        gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True
    )
    assert status == 200
    url = f"http://127.0.0.1:{gatekeeper.config.web.port}"
    await wait_until(lambda: queued_after_attempts(url, request_id, 2))
    assert (await admin_view(url, request_id))["lastError"]

    await synapse.server.start()

    await wait_for_state(gatekeeper, request_id, "active")
    assert await can_log_in(synapse.url, ivy)
    await alice.wait_for(is_edit_of(notice["event_id"], "created"), timeout=60)
    history = [e.to_state for e in await gatekeeper.store.history(request_id)]
    assert history.count("active") == 1
    await smtp.wait_for(ivy.email, "ready")
    assert len(smtp.to(ivy.email)) == 1


async def test_a_round_that_died_mid_way_is_resumed_without_a_restart(
    start_gatekeeper: StartGatekeeper, synapse: Homeserver
) -> None:
    """E.g. the database failed before the round wrote its outcome: the request must not
    stay "being created" until the next restart."""
    gatekeeper = await start_gatekeeper(registration=NO_CONFIRMATION)
    uma = new_applicant("uma")
    await sign_up(gatekeeper, uma)
    request_id = await request_id_of(gatekeeper, uma)
    # What such a round leaves behind: approved, marked as being created, nobody at it.
    await gatekeeper.db.execute(
        "UPDATE registration_request SET status = 'approved', matrix_status = 'processing'"
        " WHERE id = $1",
        request_id,
    )
    await sign_up(gatekeeper, new_applicant("wake"))  # any change wakes the provisioner

    await wait_for_state(gatekeeper, request_id, "active")
    assert await can_log_in(synapse.url, uma)
    reasons = [e.reason for e in await gatekeeper.store.history(request_id)]
    assert reasons.count("interrupted; resumed") == 1


async def test_gives_up_after_the_configured_attempts_and_tells_the_room(
    start_gatekeeper: StartGatekeeper, alice: MatrixUser, smtp: MailCatcher
) -> None:
    gatekeeper = await start_gatekeeper(
        registration={**NO_CONFIRMATION, "provisioning_max_attempts": 2},
        homeserver={"registration_shared_secret": "not-the-homeservers-secret"},
    )
    room_id = await admin_room(gatekeeper, alice)
    jo = new_applicant("jo")
    await sign_up(gatekeeper, jo)
    notice = await alice.wait_for(is_notice_for(room_id, jo))
    request_id = await request_id_of(gatekeeper, jo)

    await alice.reply_to(room_id, f"!approve {request_id}", BOT)

    failed = await wait_for_state(gatekeeper, request_id, "failed")
    assert failed["provisionAttempts"] == 2
    edit = await alice.wait_for(is_edit_of(notice["event_id"], "could not be created"))
    assert "gave up after 2 attempts" in edit["content"]["m.new_content"]["body"]
    alert = await alice.wait_for(
        lambda e: (
            e["sender"] == BOT
            and e["content"]
            .get("body", "")
            .startswith(f"Request {request_id}: the account could not")
        )
    )
    assert "not-the-homeservers-secret" not in alert["content"]["body"]
    stored = await gatekeeper.db.fetchval(
        "SELECT password_encrypted FROM registration_request WHERE id=$1", request_id
    )
    assert stored is None


async def test_sigkill_between_approval_and_account(
    synapse_restarts: Homeserver,
    smtp: MailCatcher,
    db_url: str,
    tmp_path: Path,
) -> None:
    synapse = synapse_restarts
    config = gatekeeper_config(
        synapse,
        db_url,
        tmp_path,
        smtp.port,
        registration={**NO_CONFIRMATION, "provisioning_max_attempts": 1000},
    )
    url = f"http://127.0.0.1:{config.web.port}"
    command = [sys.executable, "-m", "gatekeeper", "-c", str(tmp_path / "config.yaml")]

    async def ready() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{url}/api/admin/registrations", headers=ADMIN) as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    with (tmp_path / "gatekeeper.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            await wait_until(ready, timeout=60)
            kim = new_applicant("kim")
            async with WebClient(url) as client:
                body = {"userName": kim.localpart, "email": kim.email, "password": kim.password}
                assert (await client.post("/api/auth/sign-up", body))[0] == 201
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/api/admin/registrations", headers=ADMIN) as response:
                    request_id = (await response.json())["registrations"][0]["id"]
                await synapse.server.stop()
                async with session.post(
                    f"{url}/api/admin/registrations/{request_id}/approve", headers=ADMIN
                ) as response:
                    assert response.status == 200
            await wait_until(lambda: queued_after_attempts(url, request_id, 1))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

        await synapse.server.start()
        process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            await wait_until(ready, timeout=60)

            async def active() -> bool:
                return (await admin_view(url, request_id))["state"] == "active"

            await wait_until(active, timeout=60)
            assert await can_log_in(synapse.url, kim)
            await smtp.wait_for(kim.email, "ready")
            assert len(smtp.to(kim.email)) == 1
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
