"""Log audit (issue 8; security rule "secrets at rest and in logs"): the main flows at DEBUG,
and not one secret in any log record of any library nor in any admin-room message.

Every logger is captured at DEBUG, including the ones a deployment quiets (aiosqlite,
aiohttp.access, asyncio) and the libraries' own (mautrix, aiohttp, asyncpg), before any
redaction filter: a secret that only the filter hides is still a secret handed to a
logger. The admin room is read back through the admin's own client.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pyotp
import pytest
from mautrix.types import PaginationDirection, RoomID

from gatekeeper.appservice.homeserver.synapse_admin import ADMIN_TOKEN_STATE_KEY, SynapseAdmin
from gatekeeper.appservice.runtime.program import Gatekeeper
from gatekeeper.appservice.storage.bot_state import BotState, SealedState
from harness.matrix_user import MatrixUser, wait_until
from tests.conftest import Homeserver, MailCatcher, StartGatekeeper
from tests.flows import (
    BOT,
    Applicant,
    WebClient,
    admin_room,
    api,
    can_log_in,
    is_notice_for,
    link_token,
    new_applicant,
    request_id_of,
    sign_up,
    wait_for_state,
)

NEW_PASSWORD = "a brand new passphrase 1984"


class Capture(logging.Handler):
    """Every record, formatted with its traceback, as a deployment's handler would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def every_log_record() -> Iterator[Capture]:
    """Root and every named logger at DEBUG for the test, restored afterwards."""
    capture = Capture()
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = [(logger, logger.level, logger.disabled) for logger in [root, *loggers]]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)  # inherit the root's DEBUG
        logger.disabled = False
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled


class Secrets:
    """What the flows hand out or receive that must never be logged or shown to admins."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.totp_codes: set[str] = set()

    def add(self, *values: str | None) -> None:
        self.values.update(v for v in values if v)

    def add_cookies(self, client: WebClient) -> None:
        """Session, sudo, device and CSRF cookies: they change at login and sudo."""
        self.add(*(cookie.value for cookie in client.session.cookie_jar))

    def found_in(self, text: str) -> list[str]:
        leaks = []
        for value in self.values:
            if any(form in text for form in (value, quote(value), quote_plus(value))):
                leaks.append(value[:4] + "…")
        for code in self.totp_codes:
            # Six digits on their own, not inside a timestamp, an ID or a longer number.
            if re.search(rf"(?<![\w.:-]){code}(?![\w])", text):
                leaks.append(f"TOTP code {code[:2]}…")
        return leaks


def totp_code(secret: str, secrets: Secrets, steps_ahead: int = 0) -> str:
    code = pyotp.TOTP(secret).at(time.time() + 30 * steps_ahead)
    secrets.totp_codes.add(code)
    return code


async def room_messages(admin: MatrixUser, room_id: RoomID) -> list[str]:
    """Everything in the admin room, as the admin's client fetches it."""
    answer = await admin.api.get_messages(room_id, PaginationDirection.BACKWARD, limit=1000)
    # mautrix declares PaginatedMessages in a NamedTuple form that mypy reads as empty.
    events = answer.events  # type: ignore[attr-defined]
    return [json.dumps(event.serialize(), ensure_ascii=False) for event in events]


async def run_main_flows(
    gatekeeper: Gatekeeper,
    applicant: Applicant,
    alice: MatrixUser,
    smtp: MailCatcher,
    synapse: Homeserver,
    secrets: Secrets,
) -> RoomID:
    """Sign-up to second-factor login and reset, collecting each secret as it appears."""
    room_id = await admin_room(gatekeeper, alice)
    secrets.add(applicant.password, NEW_PASSWORD)
    assert (await sign_up(gatekeeper, applicant))[0] == 201
    confirmation = await smtp.wait_for(applicant.email, "Confirm")
    confirm_token = link_token(confirmation, "confirm-email")
    secrets.add(confirm_token, link_token(confirmation, "status"))
    assert (await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": confirm_token}))[
        0
    ] == 200

    notice = await alice.wait_for(is_notice_for(room_id, applicant))
    await alice.api.react(room_id, notice["event_id"], "✅")
    request_id = await request_id_of(gatekeeper, applicant)
    await wait_for_state(gatekeeper, request_id, "active")
    assert await can_log_in(synapse.url, applicant)

    login = {"email": applicant.email, "password": applicant.password}
    async with WebClient(gatekeeper) as client:
        assert await client.post("/api/auth/login", login) == (200, {"status": "logged-in"})
        secrets.add_cookies(client)
        assert (await client.post("/api/user/settings/sudo", {"password": applicant.password}))[
            1
        ] == {"success": True}
        secrets.add_cookies(client)
        new_email = "changed-" + applicant.email
        change = "/api/user/settings/sensitive/change-email"
        assert await client.post(change, {"newEmail": new_email}) == (200, {})
        change_token = link_token(await smtp.wait_for(new_email, "confirm"), "confirm-email-change")
        secrets.add(change_token)
        status, body = await client.post(
            "/api/user/settings/confirm-email-change", {"token": change_token}
        )
        assert (status, body["status"]) == (200, "new-email-confirmed")

        status, enrolment = await client.post("/api/user/settings/generate-temporary-2fa")
        assert status == 200
        secret = enrolment["secret"]
        secrets.add(secret, enrolment["otpauthUri"])
        status, body = await client.post(
            "/api/user/settings/sensitive/2fa",
            {"enable": True, "secondFactor": totp_code(secret, secrets)},
        )
        assert (status, body["enabled"]) == (200, True)
        secrets.add(*body["recoveryCodes"])
        secrets.add_cookies(client)
        await client.post("/api/auth/logout", {"forgetDevice": False})

    login["email"] = new_email
    async with WebClient(gatekeeper) as client:
        assert await client.post("/api/auth/login", login) == (
            200,
            {"status": "second-factor-required"},
        )
        status, body = await client.post(
            "/api/auth/login-with-second-factor",
            {**login, "secondFactor": totp_code(secret, secrets, 1), "rememberDevice": True},
        )
        assert (status, body["loggedIn"]) == (200, True)
        secrets.add_cookies(client)

        assert await client.post("/api/auth/request-password-reset", {"email": new_email}) == (
            200,
            {},
        )
        reset_token = link_token(await smtp.wait_for(new_email, "reset"), "reset-password")
        secrets.add(reset_token)
        reset = {"email": new_email, "token": reset_token, "newPassword": NEW_PASSWORD}
        assert await client.post("/api/auth/reset-password", reset) == (
            200,
            {"status": "success"},
        )
    assert await can_log_in(synapse.url, applicant, NEW_PASSWORD)
    # Everything the bot says about this request has been said once it answers this.
    await alice.reply_to(room_id, f"!show {request_id}", BOT)
    return room_id


@pytest.mark.parametrize("homeserver_access", ["admin_token", "shared_secret_only"])
async def test_no_secret_in_any_log_or_admin_message(
    start_gatekeeper: StartGatekeeper,
    synapse: Homeserver,
    alice: MatrixUser,
    smtp: MailCatcher,
    every_log_record: Capture,
    homeserver_access: str,
) -> None:
    if homeserver_access == "admin_token":
        server_admin = await synapse.server.register_user(
            f"log-audit-admin-{int(time.time() * 1000)}", "server admin password 9", admin=True
        )
        # The admin token makes Gatekeeper set Matrix passwords too: more secrets on the wire.
        gatekeeper = await start_gatekeeper(
            homeserver={"admin_token": server_admin["access_token"]}
        )
    else:
        # Gatekeeper makes its own admin user: its password and token are secrets too.
        gatekeeper = await start_gatekeeper()
    secrets = Secrets()
    secrets.add(*gatekeeper.config.secrets(), synapse.server.shared_secret)
    ivo = new_applicant("ivo")

    room_id = await run_main_flows(gatekeeper, ivo, alice, smtp, synapse, secrets)
    await wait_until(lambda: no_unsent_mail(gatekeeper))
    if homeserver_access == "shared_secret_only":
        synapse_admin = gatekeeper.accounts
        assert isinstance(synapse_admin, SynapseAdmin)
        sealed = SealedState(BotState(gatekeeper.db), gatekeeper.started.box)
        admin_user_token = await sealed.get(
            f"{ADMIN_TOKEN_STATE_KEY} {synapse_admin.admin_user_id}"
        )
        assert admin_user_token is not None  # the flows used it
        secrets.add(admin_user_token, synapse_admin.admin_user_password())

    # The capture saw the flows at DEBUG, from us and from the libraries underneath.
    debug_from = {r.name for r in every_log_record.records if r.levelno == logging.DEBUG}
    assert {"gatekeeper.synapse", "gatekeeper.mailer"} <= debug_from, sorted(debug_from)
    assert any(name.startswith("mautrix") or ".mautrix" in name for name in debug_from)
    driver = "aiosqlite" if gatekeeper.config.database.url.startswith("sqlite:") else "asyncpg"
    assert any(name.startswith((driver, "gatekeeper.database")) for name in debug_from), sorted(
        debug_from
    )
    text = "\n".join(every_log_record.lines)
    assert "/_synapse/admin/v2/users/" in text  # the account was made and changed at DEBUG
    messages = await room_messages(alice, room_id)
    assert any(ivo.user_id in message for message in messages)

    # The audit itself: neither the logs nor the room hold any of the secrets.
    assert secrets.values
    assert len(secrets.totp_codes) == 2
    assert secrets.found_in(text) == []
    for message in messages:
        assert secrets.found_in(message) == [], message


async def no_unsent_mail(gatekeeper: Gatekeeper) -> bool:
    return await gatekeeper.mailer.pending_count() == 0
