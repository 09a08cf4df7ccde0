"""Several processes against one PostgreSQL: one active, the others serving the web and
standing by; and what an operator watches (/health, /metrics)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.matrix_user import MatrixUser, wait_until
from harness.net import free_port
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
    active_account,
    api,
    can_log_in,
    is_edit_of,
    is_notice_for,
    new_applicant,
    request_id_of,
    sign_up,
    wait_for_state,
    web_url,
)

NO_CONFIRMATION = {"require_email_confirmation": False}
ADMIN = {"Authorization": f"Bearer {ADMIN_API_TOKEN}"}
postgres_only = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as got:
            return got.status, await got.json()
    except aiohttp.ClientError:
        return 0, None


async def metrics_text(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def metric(text: str, line_start: str) -> float:
    """The value of the one sample whose line starts with `line_start`."""
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, f"{line_start!r} in\n{text}"
    return float(values[0])


class Process:
    """A `gatekeeper` process with its own web and metrics ports."""

    def __init__(self, config_file: Path, log: Path, web_port: int) -> None:
        self.web_port = web_port
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "GATEKEEPER_WEB__PORT": str(web_port),
            "GATEKEEPER_METRICS__PORT": str(self.metrics_port),
        }
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "-c", str(config_file)],
                stdout=output,
                stderr=output,
                env=env,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    async def role(self) -> str | None:
        status, body = await get_json(f"http://127.0.0.1:{self.metrics_port}/health")
        return body["role"] if status == 200 else None

    async def wait_for_role(self, role: str) -> None:
        async def reached() -> bool:
            return await self.role() == role

        await wait_until(reached, timeout=60)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)


@postgres_only
async def test_the_standby_takes_over_and_finishes_the_queued_account(
    synapse: Homeserver, smtp: MailCatcher, db_url: str, tmp_path: Path, alice: MatrixUser
) -> None:
    room_id = await alice.api.create_room(invitees=[BOT])
    config = gatekeeper_config(
        synapse,
        db_url,
        tmp_path,
        smtp.port,
        registration=NO_CONFIRMATION,
        admin_room={"room": room_id},
        metrics={"enabled": True},
    )
    config_file = tmp_path / "config.yaml"
    first = Process(config_file, tmp_path / "first.log", config.web.port)
    second: Process | None = None
    try:
        await first.wait_for_role("active")
        second = Process(config_file, tmp_path / "second.log", free_port())
        await second.wait_for_role("standby")

        # A sign-up served by the standby: the active process hears of it and posts at once
        # (well before its idle round of 30 s).
        kim = new_applicant("kim")
        async with WebClient(second.url) as client:
            body = {"userName": kim.localpart, "email": kim.email, "password": kim.password}
            assert (await client.post("/api/auth/sign-up", body))[0] == 201
        notice = await alice.wait_for(is_notice_for(room_id, kim), timeout=20)

        # The active process freezes; an admin approves through the standby: queued.
        first.popen.send_signal(signal.SIGSTOP)
        _, listing = await get_json(f"{second.url}/api/admin/registrations", ADMIN)
        request_id = listing["registrations"][0]["id"]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{second.url}/api/admin/registrations/{request_id}/approve", headers=ADMIN
            ) as response,
        ):
            assert response.status == 200
        _, view = await get_json(f"{second.url}/api/admin/registrations/{request_id}", ADMIN)
        assert view["state"] == "approved"

        first.kill()
        await second.wait_for_role("active")

        async def account_created() -> bool:
            _, view = await get_json(f"{second.url}/api/admin/registrations/{request_id}", ADMIN)
            return bool(view["state"] == "active")

        await wait_until(account_created, timeout=60)
        assert await can_log_in(synapse.url, kim)
        await alice.wait_for(is_edit_of(notice["event_id"], "created"), timeout=30)
        await smtp.wait_for(kim.email, "ready")
        assert len(smtp.to(kim.email)) == 1
        figures = await metrics_text(second.metrics_port)
        assert metric(figures, "gatekeeper_active ") == 1
        assert metric(figures, 'gatekeeper_requests{state="active"}') == 1
        assert metric(figures, "gatekeeper_provisioning_attempts_total") == 1
    finally:
        first.kill()
        if second is not None:
            second.popen.send_signal(signal.SIGTERM)
            assert second.popen.wait(30) == 0


@postgres_only
async def test_sessions_csrf_and_rate_limits_work_across_processes(
    start_gatekeeper: StartGatekeeper,
) -> None:
    limits = {"login_attempts_per_minute": 6}
    first = await start_gatekeeper(registration=NO_CONFIRMATION, security=limits)
    second = await start_gatekeeper(registration=NO_CONFIRMATION, security=limits)
    assert (first.role, second.role) == ("active", "standby")
    ada = await active_account(first, "ada")

    async with WebClient(first) as client:
        login = {"email": ada.email, "password": ada.password}
        assert await client.post("/api/auth/login", login) == (200, {"status": "logged-in"})
        client.base = web_url(second)
        status, info = await client.get("/api/user-info")
        assert (status, info["emailVerified"]) == (200, True)
        body = {"language": "de"}
        assert (await client.post("/api/user/settings/language", body))[0] == 200
        client.base = web_url(first)
        assert (await client.get("/api/user-info"))[1]["language"] == "de"

    # Logins sent to both processes count against one limit per address (6 a minute;
    # the login above was the first).
    wrong = {"email": ada.email, "password": "not the password"}
    answers = []
    async with WebClient(first) as client:
        for attempt in range(6):
            client.base = web_url(second if attempt % 2 else first)
            answers.append((await client.post("/api/auth/login", wrong))[0])
    assert answers == [200, 200, 200, 200, 200, 429]


async def test_health_and_metrics(
    start_gatekeeper: StartGatekeeper, synapse_restarts: Homeserver
) -> None:
    metrics_port = free_port()
    gatekeeper = await start_gatekeeper(
        registration=NO_CONFIRMATION, metrics={"enabled": True, "port": metrics_port}
    )
    health = f"{web_url(gatekeeper)}/health"
    assert await get_json(health) == (
        200,
        {"status": "ok", "database": "ok", "homeserver": "ok", "role": "active"},
    )

    await active_account(gatekeeper, "max")
    rejected = new_applicant("rex")
    assert (await sign_up(gatekeeper, rejected))[0] == 201
    request_id = await request_id_of(gatekeeper, rejected)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/reject", admin=True)
    await wait_for_state(gatekeeper, request_id, "rejected")
    figures = await metrics_text(metrics_port)
    assert metric(figures, 'gatekeeper_requests{state="active"}') == 1
    assert metric(figures, 'gatekeeper_requests{state="rejected"}') == 1
    assert metric(figures, 'gatekeeper_requests{state="pending"}') == 0
    assert metric(figures, 'gatekeeper_decisions_total{decision="approve"}') == 1
    assert metric(figures, 'gatekeeper_decisions_total{decision="reject"}') == 1
    assert metric(figures, "gatekeeper_provisioning_attempts_total") == 1
    assert metric(figures, "gatekeeper_provisioning_failures_total") == 0
    assert metric(figures, "gatekeeper_active ") == 1
    sign_ups = (
        'gatekeeper_http_request_duration_seconds_count{method="POST",route="/api/auth/sign-up"}'
    )
    assert metric(figures, sign_ups) == 2

    await synapse_restarts.server.stop()
    status, body = await get_json(health)
    assert (status, body["homeserver"], body["database"]) == (503, "unreachable", "ok")
    await synapse_restarts.server.start()
    assert (await get_json(health))[0] == 200


def test_several_workers_need_postgresql(tmp_path: Path, synapse: Homeserver) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(synapse.config_file.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "-c", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 10
    assert "database.url: several workers need PostgreSQL" in result.stderr


@postgres_only
async def test_workers_option_runs_one_active_and_restarts_a_dead_one(
    synapse: Homeserver, smtp: MailCatcher, db_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    gatekeeper_config(
        synapse, db_url, tmp_path, smtp.port, metrics={"enabled": True, "port": metrics_port}
    )
    # -c before the subcommand and --workers after it: both must count.
    config_file = str(tmp_path / "config.yaml")
    command = [sys.executable, "-m", "gatekeeper", "-c", config_file, "run", "--workers", "2"]
    with (tmp_path / "workers.log").open("ab") as output:
        supervisor = subprocess.Popen(
            command,
            stdout=output,
            stderr=output,
        )
    try:

        async def roles() -> list[str | None]:
            answers = [
                await get_json(f"http://127.0.0.1:{metrics_port + index}/health")
                for index in range(2)
            ]
            return sorted(body["role"] for status, body in answers if status == 200)

        async def one_active_one_standby() -> bool:
            return await roles() == ["active", "standby"]

        await wait_until(one_active_one_standby, timeout=60)
        _, active = await get_json(f"http://127.0.0.1:{metrics_port}/health")
        active_port = metrics_port if active["role"] == "active" else metrics_port + 1
        killed = [
            pid
            for pid in map(
                int, subprocess.check_output(["pgrep", "-P", str(supervisor.pid)]).split()
            )
            if f"GATEKEEPER_METRICS__PORT={active_port}".encode()
            in Path(f"/proc/{pid}/environ").read_bytes()
        ]
        assert len(killed) == 1
        os.kill(killed[0], signal.SIGKILL)
        # The standby takes over and the supervisor starts the dead one again, as standby.
        await wait_until(one_active_one_standby, timeout=60)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
