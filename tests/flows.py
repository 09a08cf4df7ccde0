"""Steps that several acceptance tests take, as an applicant or an admin would."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import pyotp
from mautrix.types import RoomID

from gatekeeper.appservice.runtime.program import Gatekeeper
from harness.matrix_user import Event, MatrixUser, wait_until
from tests.conftest import ADMIN_API_TOKEN, SERVER_NAME, MailCatcher, StartGatekeeper

BOT = f"@gatekeeper:{SERVER_NAME}"
PASSWORD = "a perfectly fine passphrase 42"


@dataclass(frozen=True)
class Applicant:
    localpart: str
    email: str
    password: str = PASSWORD

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{SERVER_NAME}"


def new_applicant(prefix: str = "ann") -> Applicant:
    tag = secrets.token_hex(4)
    return Applicant(f"{prefix}-{tag}", f"{prefix}-{tag}@example.org")


def web_url(gatekeeper: Gatekeeper) -> str:
    return f"http://127.0.0.1:{gatekeeper.config.web.port}"


class WebClient:
    """A browser-like client: keeps cookies and sends the CSRF cookie back as the header."""

    def __init__(self, gatekeeper: Gatekeeper | str) -> None:
        self.base = gatekeeper if isinstance(gatekeeper, str) else web_url(gatekeeper)
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> WebClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        headers = dict(headers or {})
        if method != "GET":
            if self.cookie("CSRF-Token") is None:
                await self.request("GET", "/api/csrf")
            headers.setdefault("X-CSRF-Token", self.cookie("CSRF-Token") or "")
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            self.last_headers = response.headers
            return response.status, await response.json()

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)


async def api(
    gatekeeper: Gatekeeper, method: str, path: str, body: Any = None, admin: bool = False
) -> tuple[int, Any]:
    """One request from a fresh client (as the admin API's script when `admin`)."""
    headers = {"Authorization": f"Bearer {ADMIN_API_TOKEN}"} if admin else {}
    async with WebClient(gatekeeper) as client:
        return await client.request(method, path, body, headers)


async def sign_up(gatekeeper: Gatekeeper, applicant: Applicant, **extra: Any) -> tuple[int, Any]:
    body = {
        "userName": applicant.localpart,
        "email": applicant.email,
        "password": applicant.password,
        "language": "en",
        **extra,
    }
    return await api(gatekeeper, "POST", "/api/auth/sign-up", body)


def link_token(mail: EmailMessage, path: str) -> str:
    match = re.search(rf"/{path}\?token=([A-Za-z0-9_-]+)", mail.get_content())
    assert match, f"no /{path} link in the mail"
    return match.group(1)


async def confirmed_applicant(
    gatekeeper: Gatekeeper, smtp: MailCatcher, prefix: str
) -> tuple[Applicant, EmailMessage]:
    """A new applicant who signed up and followed the link of the confirmation mail, and
    that mail."""
    applicant = new_applicant(prefix)
    await sign_up(gatekeeper, applicant)
    mail = await smtp.wait_for(applicant.email, "confirm")
    token = link_token(mail, "confirm-email")
    await api(gatekeeper, "POST", "/api/user/confirm-email", {"token": token})
    return applicant, mail


async def admin_room(gatekeeper: Gatekeeper, admin: MatrixUser) -> RoomID:
    """The room the bot created, joined by `admin`."""
    room_id = gatekeeper.bot.room.room_id
    await admin.wait_for_invite(room_id)
    await admin.api.join_room_by_id(room_id)
    return room_id


async def started_with_room(
    start_gatekeeper: StartGatekeeper, admin: MatrixUser, **sections: Any
) -> tuple[Gatekeeper, RoomID]:
    """A Gatekeeper started with these config sections, and its room, joined by `admin`."""
    gatekeeper = await start_gatekeeper(**sections)
    return gatekeeper, await admin_room(gatekeeper, admin)


async def room_caught_up(admin: MatrixUser, room_id: RoomID) -> None:
    """The bot handles events in order: once it answers this, it has seen everything before."""
    assert "!endmarker" in await admin.reply_to(room_id, "!endmarker", BOT)


def fake_event(
    kind: str, room_id: RoomID, sender: str, content: dict[str, Any]
) -> dict[str, object]:
    """An event as Synapse would push it in a transaction, for tests that push their own."""
    return {
        "type": kind,
        "room_id": room_id,
        "sender": sender,
        "event_id": f"$fake-{secrets.token_hex(8)}",
        "origin_server_ts": int(time.time() * 1000),
        "content": content,
    }


def is_notice_for(room_id: RoomID, applicant: Applicant) -> Any:
    def check(event: Event) -> bool:
        content = event.get("content", {})
        return (
            event["room_id"] == room_id
            and event["sender"] == BOT
            and content.get("body", "").startswith("Sign-up request")
            and applicant.user_id in content.get("body", "")
            and "m.new_content" not in content
        )

    return check


def is_edit_of(event_id: str, containing: str) -> Any:
    def check(event: Event) -> bool:
        content = event.get("content", {})
        relation = content.get("m.relates_to", {})
        return (
            relation.get("rel_type") == "m.replace"
            and relation.get("event_id") == event_id
            and containing in content.get("m.new_content", {}).get("body", "")
        )

    return check


async def can_log_in(
    homeserver_url: str, applicant: Applicant, password: str | None = None
) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{homeserver_url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": applicant.localpart},
                "password": password or applicant.password,
            },
        ) as response,
    ):
        return response.status == 200


async def wait_for_state(gatekeeper: Gatekeeper, request_id: str, state: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        _, body = await api(gatekeeper, "GET", f"/api/admin/registrations/{request_id}", admin=True)
        return body if body.get("state") == state else None

    return await wait_until(reached, timeout=30)


async def request_id_of(gatekeeper: Gatekeeper, applicant: Applicant) -> str:
    found = await gatekeeper.store.search(applicant.localpart)
    assert len(found) == 1
    return found[0].id


async def active_account(gatekeeper: Gatekeeper, prefix: str = "acct") -> Applicant:
    """An applicant whose request was approved and whose Matrix account exists.

    Needs a Gatekeeper started without email confirmation."""
    applicant = new_applicant(prefix)
    assert (await sign_up(gatekeeper, applicant))[0] == 201
    request_id = await request_id_of(gatekeeper, applicant)
    await api(gatekeeper, "POST", f"/api/admin/registrations/{request_id}/approve", admin=True)
    await wait_for_state(gatekeeper, request_id, "active")
    return applicant


async def logged_in(gatekeeper: Gatekeeper, applicant: Applicant) -> WebClient:
    client = WebClient(gatekeeper)
    status, body = await client.post(
        "/api/auth/login", {"email": applicant.email, "password": applicant.password}
    )
    assert (status, body) == (200, {"status": "logged-in"})
    return client


async def pass_time(gatekeeper: Gatekeeper, ms: int) -> None:
    """Make the mail links and the rate limits `ms` older, as if that much time had passed."""
    await gatekeeper.db.execute("UPDATE email_token SET created_at = created_at - $1", ms)
    await gatekeeper.db.execute("UPDATE rate_limit SET window_start = window_start - $1", ms)


async def all_mail_sent(gatekeeper: Gatekeeper) -> None:
    """Wait until the outbox has handed every queued mail to the mail server."""

    async def drained() -> bool:
        unsent = await gatekeeper.db.fetchval(
            "SELECT COUNT(*) FROM mail_outbox WHERE sent_at IS NULL"
        )
        return int(unsent) == 0

    await wait_until(drained, timeout=20)


@dataclass(frozen=True)
class TwoFactor:
    totp: pyotp.TOTP
    recovery_codes: list[str]
    confirming_code: str  # the code that turned it on: accepted once already


async def turn_on_2fa(client: WebClient, applicant: Applicant) -> TwoFactor:
    """Turn on 2FA through the API, logged in as `applicant`."""
    status, enrolment = await client.post("/api/user/settings/generate-temporary-2fa")
    assert status == 200
    assert enrolment["qrCodeSvg"].startswith("<svg")
    assert enrolment["secret"] in enrolment["otpauthUri"]
    totp = pyotp.TOTP(enrolment["secret"])
    assert (await client.post("/api/user/settings/sudo", {"password": applicant.password}))[1] == {
        "success": True
    }
    code = totp.now()
    status, body = await client.post(
        "/api/user/settings/sensitive/2fa", {"enable": True, "secondFactor": code}
    )
    assert (status, body["enabled"]) == (200, True)
    return TwoFactor(totp, body["recoveryCodes"], code)
